"""fmm_linear_torgb (kernels/linear_rgb.py): the ToRGB folded into the preceding layer's epilogue
gives the per-layer chain's bits (the layer, then the ToRGB on its stored output), for both
outputs, on the Triton backend (interpreter; tl.dot as a fixed-order sum) and the torch one;
widths that are not a multiple of the column tile, every input form of the layer (x, x by
index, the embedding, split conv0's parent part by index), the image as fp32, uint8 and straight
into a poisoned frame-buffer view."""
import pytest
import torch

import tests.kernel_utils  # noqa: F401  (TRITON_INTERPRET is set by tests/conftest.pytest_configure)
from kernels import fmm_linear
from kernels.linear_rgb import fmm_linear_torgb

pytest.importorskip("triton")
# Interpreter-mode tl.dot is a fixed-order sum (tests/conftest.fixed_order_dot): an element's bits
# then depend only on its row and column, not on the dot's tile shape, as on a GPU's tensor cores.
pytestmark = pytest.mark.usefixtures("fixed_order_dot")

F, TH, TW = 2, 3, 5
M = F * TH * TW


def _layer(kind, N, precision, g):
    """Keyword arguments of one layer of `kind` with N outputs (non-zero random data)."""
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    E, K = 4, 24
    kw = dict(bias=torch.randn(N, generator=g) * 0.1, act=True, clamp=1.5, precision=precision)
    if kind in ("conv", "conv_index"):
        kw["weight"] = (torch.randn(N, K, generator=g) * 0.3).to(dt)
        if kind == "conv":
            kw["x"] = torch.randn(M, K, generator=g).to(dt)
        else:
            kw["x"] = torch.randn(M // 2 + 1, K, generator=g).to(dt)
            kw["x_index"] = torch.randint(0, M // 2 + 1, (M,), generator=g)
    else:
        kw["weight"] = (torch.randn(N, 2 * E, generator=g) * 0.3).to(dt)
        kw.update(emb_A=torch.randn(E, 2, generator=g) * 3, emb_b=torch.randn(F, E, generator=g),
                  xs=torch.linspace(-1, 0.8, TW), ys=torch.linspace(-0.6, 0.9, TH))
        if kind == "split":
            kw["pre_add"] = torch.randn(8, N, generator=g)
            kw["pre_index"] = torch.randint(0, 8, (M,), generator=g)
    return kw


def _rgb(N, with_img, g, index=True):
    kw = dict(rgb_weight=torch.randn(3, N, generator=g) * 0.2, rgb_bias=torch.randn(3, generator=g) * 0.1,
              rgb_clamp=0.9)
    if with_img:
        kw["img"] = torch.randn(7, 3, generator=g) * 0.5
        kw["img_index"] = torch.randint(0, 7, (M,), generator=g) if index else None
        if not index:
            kw["img"] = torch.randn(M, 3, generator=g) * 0.5
    return kw


def _chain(layer, rgb, uint8, backend):
    layer = dict(layer)
    w, x = layer.pop("weight"), layer.pop("x", None)
    h = fmm_linear(w, x, backend=backend, **layer)
    img = fmm_linear(rgb["rgb_weight"].to(h.dtype), h, bias=rgb["rgb_bias"], clamp=rgb["rgb_clamp"],
                     post_add=rgb.get("img"), post_index=rgb.get("img_index"), out_uint8=uint8,
                     out_dtype=None if uint8 else torch.float32, precision=layer["precision"], backend=backend)
    return h, img


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["conv", "conv_index", "emb", "split"])
@pytest.mark.parametrize("N", [40, 64])      # 40: a partial column tile (chunks of 32 fp32 / 64 bf16)
def test_fold_equals_the_per_layer_chain(kind, N, precision):
    g = torch.Generator().manual_seed(hash((kind, N, precision)) % 1000)
    layer, rgb = _layer(kind, N, precision, g), _rgb(N, with_img=kind != "emb", g=g)
    rgb["rgb_weight"] = rgb["rgb_weight"].to(layer["weight"].dtype)
    for uint8 in (False, True):
        want_h, want_img = _chain(layer, rgb, uint8, "triton")
        for backend in ("triton", "torch"):
            kw = dict(layer)
            h, img = fmm_linear_torgb(kw.pop("weight"), kw.pop("x", None), **rgb, img_uint8=uint8,
                                      backend=backend, **kw)
            if backend == "torch":
                want_h, want_img = _chain(layer, rgb, uint8, "torch")
            assert h.dtype == want_h.dtype and torch.equal(h, want_h), (backend, uint8)
            assert img.dtype == want_img.dtype and torch.equal(img, want_img), (backend, uint8)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_image_into_a_frame_buffer_view(backend):
    g = torch.Generator().manual_seed(3)
    layer, rgb = _layer("conv", 40, "fp32", g), _rgb(40, with_img=True, g=g, index=False)
    _, want = _chain(layer, rgb, True, backend)
    buf = torch.full((F, TH + 2, TW + 3, 3), 0xAB, dtype=torch.uint8)
    view = buf[:, 1:1 + TH, 2:2 + TW]
    kw = dict(layer)
    _, img = fmm_linear_torgb(kw.pop("weight"), kw.pop("x"), **rgb, img_uint8=True, img_out=view,
                              backend=backend, **kw)
    assert img is view and torch.equal(view.reshape(-1, 3), want)
    outside = torch.ones(buf.shape, dtype=torch.bool)
    outside[:, 1:1 + TH, 2:2 + TW] = False
    assert (buf[outside] == 0xAB).all()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_refusals(backend):
    g = torch.Generator().manual_seed(4)
    layer, rgb = _layer("conv", 40, "fp32", g), _rgb(40, with_img=True, g=g)
    w, x = layer.pop("weight"), layer.pop("x")
    bad = [(dict(rgb, rgb_weight=torch.randn(3, 39)), "rgb_weight must have shape"),
           (dict(rgb, rgb_weight=torch.randn(17, 40)), "1..16 rows"),
           (dict(rgb, rgb_bias=torch.randn(4)), "rgb_bias must have shape"),
           (dict(rgb, img=None), "img_index given without img"),
           (dict(rgb, img_index=torch.full((M,), 7)), "outside"),
           (dict(rgb, rgb_clamp=-1.0), "rgb_clamp")]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            fmm_linear_torgb(w, x, **kw, backend=backend, **layer)
    with pytest.raises(ValueError, match="out_dtype must be"):       # the layer stores activations
        fmm_linear_torgb(w, x, **rgb, backend=backend, **layer, out_dtype=torch.uint8)

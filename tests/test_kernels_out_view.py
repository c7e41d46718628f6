"""fmm_linear(out=...): the rows stored straight into an (F, h, w, N) view of a larger buffer (the
renderer's frame buffer), on both backends, equal to the returned tensor bit for bit, and nothing
outside the view written (the buffer is poisoned with 0xAB / NaN)."""
import pytest
import torch

import tests.kernel_utils  # noqa: F401  (TRITON_INTERPRET is set by tests/conftest.pytest_configure)
from kernels import fmm_linear

pytest.importorskip("triton")
BACKENDS = ["torch", "triton"]


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(3, 16, generator=g) * 0.3
    x = torch.randn(2 * 5 * 7, 16, generator=g)
    post = torch.randn(2 * 3 * 4, 3, generator=g) * 0.5
    idx = torch.randint(0, 24, (70,), generator=g)
    bias = torch.randn(3, generator=g) * 0.1
    return W, x, dict(bias=bias, clamp=2.0, post_add=post, post_index=idx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("uint8", [True, False])
def test_out_view_equals_returned_rows(backend, uint8):
    W, x, kw = _case()
    kw.update(out_uint8=True) if uint8 else kw.update(out_dtype=torch.float32)
    ref = fmm_linear(W, x, backend=backend, **kw)                       # (70, 3)
    if uint8:
        buf = torch.full((2, 9, 11, 3), 0xAB, dtype=torch.uint8)
    else:
        buf = torch.full((2, 9, 11, 3), float("nan"))
    view = buf[:, 2:7, 3:10]                                            # (2, 5, 7, 3), row stride 33
    got = fmm_linear(W, x, backend=backend, out=view, **kw)
    assert got is view
    assert torch.equal(view.reshape(-1, 3), ref)
    outside = torch.ones(buf.shape, dtype=torch.bool)
    outside[:, 2:7, 3:10] = False
    poison = buf[outside]
    assert (poison == 0xAB).all() if uint8 else poison.isnan().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_view_with_embedding_tile(backend):
    """With the embedding the view is the embedding's tile: (F, h, w) must match it."""
    g = torch.Generator().manual_seed(1)
    E, N, F, h, w = 4, 16, 2, 3, 5
    kw = dict(emb_A=torch.randn(E, 2, generator=g), emb_b=torch.randn(F, E, generator=g),
              xs=torch.linspace(-1, 1, w), ys=torch.linspace(-0.5, 0.7, h), act=True)
    Wt = torch.randn(N, 2 * E, generator=g) * 0.3
    ref = fmm_linear(Wt, None, backend=backend, **kw)
    buf = torch.full((F, h + 2, w + 4, N), float("nan"))
    got = fmm_linear(Wt, None, backend=backend, out=buf[:, 1:1 + h, 2:2 + w], **kw)
    assert torch.equal(got.reshape(-1, N), ref)
    with pytest.raises(ValueError, match="embedding tile"):
        fmm_linear(Wt, None, backend=backend, out=buf[:, :w, :h], **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_view_refusals(backend):
    W, x, kw = _case()
    kw.update(out_uint8=True)
    u8 = torch.zeros((2, 5, 7, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="dtype"):
        fmm_linear(W, x, backend=backend, out=u8.float(), **kw)
    with pytest.raises(ValueError, match="rows"):
        fmm_linear(W, x, backend=backend, out=u8[:, :4], **kw)
    with pytest.raises(ValueError, match="4-D"):
        fmm_linear(W, x, backend=backend, out=u8.view(70, 3), **kw)
    with pytest.raises(ValueError, match="unit stride"):
        fmm_linear(W, x, backend=backend, out=torch.zeros((2, 5, 7, 6), dtype=torch.uint8)[..., ::2], **kw)
    with pytest.raises(ValueError, match="overlap"):
        fmm_linear(W, x, backend=backend, out=torch.zeros((1, 1, 1, 3), dtype=torch.uint8).expand(2, 5, 7, 3),
                   **kw)

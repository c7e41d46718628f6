"""The host plumbing of kernels/ (issue 9): one reference per op, each launch checks its arguments
once on either backend, one autograd formula per op, one PRECISIONS / COMPUTE_DTYPES."""
import pytest
import torch

import kernels
import kernels.linear as lin
import kernels.linear_backward as lbw
import kernels.modulate_backward as mbw
from kernels._common import COMPUTE_DTYPES, FP32_PRECISIONS, PRECISIONS, triton_dot_precision
from kernels.reference import REFERENCES, reference
from tests.kernel_utils import BACKENDS, device_for, needs_triton
from tests.test_kernels_fmm_linear import make_case, to_device


def test_one_reference_per_op():
    # Every op of the package (as torch.ops.digan, plus torgb_modulate) has its reference, and
    # REFERENCES holds the very functions the op modules define.
    assert set(REFERENCES) == {"fmm_linear", "fmm_linear_backward", "fmm_modulate",
                               "fmm_modulate_backward", "torgb_modulate", "to_uint8", "rgb_to_yuv420"}
    for op, ref in REFERENCES.items():
        assert ref is getattr(kernels, f"{op}_reference"), op
        assert reference(op) is ref
    with pytest.raises(ValueError, match="no reference"):
        reference("fmm_nope")


def test_one_precision_table():
    assert PRECISIONS == tuple(COMPUTE_DTYPES) == ("fp32", "tf32", "bf16", "fp32-ieee")
    assert COMPUTE_DTYPES["tf32"] == torch.float32 and COMPUTE_DTYPES["bf16"] == torch.bfloat16
    assert COMPUTE_DTYPES["fp32-ieee"] == torch.float32
    # The Triton dot of each mode (kernels/_triton_common._mma): fp32 on the tensor cores as
    # 3xTF32, the exact FMA dot kept selectable as fp32-ieee.
    assert {p: triton_dot_precision(p) for p in PRECISIONS} == {
        "fp32": "tf32x3", "tf32": "tf32", "bf16": "ieee", "fp32-ieee": "ieee"}
    assert FP32_PRECISIONS == ("fp32", "fp32-ieee")
    with pytest.raises(ValueError, match="precision"):
        triton_dot_precision("ieee")


def _counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_launch_checks_once(monkeypatch, backend):
    """fmm_linear and fmm_linear_backward check their arguments exactly once per call, whichever
    backend runs (the Triton path used to check in the dispatch and again in the custom op)."""
    kw = to_device(make_case(3, E=4, F=2, h=3, w=2, KX=5, N=3, pre=True, pre_rows=12, bias=True,
                             act=True), device_for(backend))
    fwd = _counting(monkeypatch, lin, "check_args")
    y = lin.fmm_linear(**kw, out_dtype=torch.float32, backend=backend)
    assert fwd == ["check_args"]
    bwd = _counting(monkeypatch, lbw, "_check_backward")
    g = torch.randn_like(y)
    lbw.fmm_linear_backward(g, kw["weight"], kw["x"], out=y, emb_A=kw["emb_A"], emb_b=kw["emb_b"],
                            xs=kw["xs"], ys=kw["ys"], pre_rows=kw["pre_add"].shape[0],
                            pre_index=kw.get("pre_index"), has_bias=True, act=True, backend=backend)
    assert bwd == ["_check_backward"]


def test_one_autograd_formula_per_op():
    """The autograd Functions and the custom ops' registered autograd share one backward."""
    assert lbw.FmmLinearFunction.backward is lbw._fmm_linear_vjp
    assert mbw.FmmModulateFunction.backward is mbw._fmm_modulate_vjp


@needs_triton
def test_op_autograd_equals_function_autograd():
    """Gradients through the custom op digan::fmm_linear (its registered autograd) are those of
    fmm_linear_autograd on the Triton backend, bit for bit: the same formula and kernels, also
    when post_add after act makes the op's backward recompute the output before post_add."""
    dev = device_for("triton")
    kw = to_device(make_case(5, M=40, x_rows=20, KX=6, N=4, pre=True, pre_rows=40, bias=True,
                             act=True, post=True, post_rows=10), dev)
    rest = {k: v for k, v in kw.items() if k not in ("weight", "x")}
    grads = []
    for via_op in (False, True):
        w = kw["weight"].clone().requires_grad_(True)
        x = kw["x"].clone().requires_grad_(True)
        if via_op:
            out = torch.ops.digan.fmm_linear(*lin._args(w, x, **rest, out_dtype=torch.float32))
        else:
            out = lbw.fmm_linear_autograd(w, x, **rest, backend="triton")
        # Distinct upstream gradient values per element (no all-ones shortcut).
        out.backward(torch.linspace(-1.0, 2.0, out.numel(), device=dev).reshape(out.shape))
        grads.append((w.grad, x.grad))
    (gw0, gx0), (gw1, gx1) = grads
    assert gw0.abs().sum() > 0 and gx0.abs().sum() > 0, "vacuous gradients"
    # Bitwise: the same kernels on the same operands (the recomputed output equals the kept one).
    assert torch.equal(gw0, gw1) and torch.equal(gx0, gx1)

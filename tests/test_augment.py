"""DiffAugment on DIGAN's 7-channel pairs and on single frames."""
import pytest
import torch
import torch.nn.functional as F

from digan.train.augment import (
    AugmentParams,
    apply_params,
    augment_frames,
    augment_pairs,
    join_pair,
    parse_policy,
    sample_params,
    split_pair,
    translate,
)


def pairs(b=4, h=16, w=16, seed=0, same_frames=False):
    """Random pairs in [-1, 1] with a ΔT plane per pair; never all zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 7, h, w, generator=g) * 2 - 1
    if same_frames:
        x[:, 3:6] = x[:, 0:3]
    x[:, 6] = torch.rand(b, 1, 1, generator=g)  # constant plane per pair
    return x


def gen(seed):
    return torch.Generator().manual_seed(seed)


def official_diffaugment(x7, policy="color,translation"):
    """Reference: the official DIGAN DiffAugment recipe re-expressed (draws from the global RNG in the
    official order; frames in (b t) order; one draw per pair; ΔT re-attached untouched)."""
    b, _, h, w = x7.shape
    x = x7[:, :6].reshape(b * 2, 3, h, w)

    def per_pair(v):  # (B, ...) -> (2B, ...)
        return v.repeat_interleave(2, dim=0)

    if "color" in policy:
        x = x + (per_pair(torch.rand(b, 1, 1, 1)) - 0.5)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (per_pair(torch.rand(b, 1, 1, 1)) * 2) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        x = (x - m) * (per_pair(torch.rand(b, 1, 1, 1)) + 0.5) + m
    if "translation" in policy:
        sx, sy = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        tx = per_pair(torch.randint(-sx, sx + 1, size=[b, 1, 1]))
        ty = per_pair(torch.randint(-sy, sy + 1, size=[b, 1, 1]))
        gb, gx, gy = torch.meshgrid(torch.arange(2 * b), torch.arange(h), torch.arange(w), indexing="ij")
        gx = torch.clamp(gx + tx + 1, 0, h + 1)
        gy = torch.clamp(gy + ty + 1, 0, w + 1)
        x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2)
    return torch.cat([x.reshape(b, 6, h, w), x7[:, 6:7]], dim=1)


def test_matches_official_recipe():
    x = pairs(b=5, h=16, w=24)
    torch.manual_seed(11)
    want = official_diffaugment(x)
    torch.manual_seed(11)
    got = augment_pairs(x)  # generator=None draws from the global RNG, in the official order
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_delta_t_untouched_and_shape():
    x = pairs()
    y = augment_pairs(x, generator=gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y[:, 6], x[:, 6])
    assert not torch.allclose(y[:, :6], x[:, :6])


def test_pair_frames_share_one_draw():
    x = pairs(b=8, same_frames=True)
    y = augment_pairs(x, generator=gen(1))
    assert torch.equal(y[:, 0:3], y[:, 3:6])
    # ...while the pairs themselves get different draws.
    x = pairs(b=8, same_frames=True)
    x[:] = x[:1]
    y = augment_pairs(x, generator=gen(1))
    assert all(not torch.allclose(y[0, :6], y[k, :6]) for k in range(1, 8))


def test_frames_get_one_draw_each():
    x = torch.rand(1, 3, 16, 16, generator=gen(2)).expand(6, 3, 16, 16) + 0.1
    y = augment_frames(x, generator=gen(3))
    assert y.shape == x.shape
    assert all(not torch.allclose(y[0], y[k]) for k in range(1, 6))


def test_color_formulas():
    x = pairs(b=3)
    p = sample_params(3, 16, 16, "color", gen(4))
    assert p.translation is None and p.cutout is None
    assert (p.brightness.abs() <= 0.5).all() and (p.saturation >= 0).all() and (p.saturation < 2).all()
    assert (p.contrast >= 0.5).all() and (p.contrast < 1.5).all()
    y = augment_pairs(x, params=p)
    for b in range(3):
        for k in (0, 3):  # both frames of pair b, each with its own means
            z = x[b, k:k + 3] + p.brightness[b]
            z = (z - z.mean(0, keepdim=True)) * p.saturation[b] + z.mean(0, keepdim=True)
            z = (z - z.mean()) * p.contrast[b] + z.mean()
            torch.testing.assert_close(y[b, k:k + 3], z, rtol=0, atol=1e-6)


@pytest.mark.parametrize("h,w", [(16, 16), (32, 24), (8, 8)])
def test_translation_integer_shift_zero_fill(h, w):
    x = torch.rand(6, 3, h, w, generator=gen(5)) + 0.5  # strictly positive: zeros can only be fill
    p = sample_params(6, h, w, "translation", gen(6))
    sy, sx = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    assert p.translation.dtype == torch.int64
    assert (p.translation[:, 0].abs() <= sy).all() and (p.translation[:, 1].abs() <= sx).all()
    y = apply_params(x, p)
    for n, (dy, dx) in enumerate(p.translation.tolist()):
        want = torch.zeros_like(x[n])
        src = x[n, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
        want[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)] = src
        assert torch.equal(y[n], want)


def test_translation_range_covers_both_signs():
    t = sample_params(4000, 32, 32, "translation", gen(7)).translation
    assert set(t[:, 0].tolist()) == set(range(-4, 5)) and set(t[:, 1].tolist()) == set(range(-4, 5))


def test_translate_known_shift():
    x = torch.arange(1, 17, dtype=torch.float32).view(1, 1, 4, 4)
    y = translate(x, torch.tensor([[1, -1]]))  # out[i, j] = in[i + 1, j - 1]
    want = torch.tensor([[0, 5, 6, 7], [0, 9, 10, 11], [0, 13, 14, 15], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(y[0, 0], want)


def test_cutout_zeroes_a_square():
    x = torch.rand(2, 3, 16, 16, generator=gen(8)) + 0.5
    p = sample_params(2, 16, 16, "cutout", gen(9))
    y = apply_params(x, p)
    for n, (cy, cx) in enumerate(p.cutout.tolist()):
        rows = [i for i in range(16) if cy - 4 <= i < cy + 4]
        cols = [j for j in range(16) if cx - 4 <= j < cx + 4]
        mask = torch.ones(16, 16, dtype=torch.bool)
        mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = False
        assert (y[n][:, ~mask] == 0).all() and torch.equal(y[n][:, mask], x[n][:, mask])


def test_reproducible_with_seed():
    x = pairs()
    a = augment_pairs(x, generator=gen(10))
    b = augment_pairs(x, generator=gen(10))
    c = augment_pairs(x, generator=gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment_frames(x[:, :3], generator=gen(10)), augment_frames(x[:, :3], generator=gen(10)))


def test_gradients_flow():
    x = pairs(b=3).requires_grad_(True)
    w = torch.rand(x.shape, generator=gen(13)) + 0.5
    (augment_pairs(x, generator=gen(14)) * w).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, :6].abs().sum() > 0
    assert torch.equal(x.grad[:, 6], w[:, 6])  # ΔT passes straight through
    # Exact gradients of the whole chain, in float64 with fixed draws.
    p = sample_params(2, 8, 8, "color,translation,cutout", gen(15))
    xd = pairs(b=2, h=8, w=8).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: augment_pairs(t, params=p), (xd,))


def test_split_join_and_shared_draws():
    x = pairs(b=3)
    frames, dt = split_pair(x)
    assert frames.shape == (6, 3, 16, 16) and dt.shape == (3, 1, 16, 16)
    assert torch.equal(frames[2], x[1, 0:3]) and torch.equal(frames[3], x[1, 3:6])  # (b t) order
    assert torch.equal(join_pair(frames, dt), x)
    # The image head's frames split from the augmented pairs = the frames augmented with the same draws.
    p = sample_params(3, 16, 16, generator=gen(16))
    y = augment_pairs(x, params=p)
    torch.testing.assert_close(split_pair(y)[0], apply_params(frames, p.per_frame(2)), rtol=0, atol=0)


def test_policy_parsing_and_checks():
    assert parse_policy("color, translation") == ("color", "translation")
    assert parse_policy("") == ()
    x = pairs()
    assert torch.equal(augment_pairs(x, policy=""), x)
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        parse_policy("color,zoom")
    with pytest.raises(ValueError, match="pairs"):
        split_pair(x[:, :6])
    with pytest.raises(ValueError, match="draws"):
        apply_params(x[:, :3], sample_params(5, 16, 16, generator=gen(0)))
    assert len(AugmentParams()) == 0

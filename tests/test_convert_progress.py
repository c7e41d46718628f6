"""`digan convert` progress: digan.checkpoint.convert's tensor callback, the tqdm bar on stderr and
the summary line (path, tensors, MiB, seconds), and --quiet."""
import re
import subprocess
import sys

import pytest
import torch

from digan.checkpoint import convert, load_generator
from engine.convert_cmd import ConvertProgress
from tests.conftest import REPO, perturbed_generator


@pytest.fixture(scope="module")
def pickle_path(tmp_path_factory):
    """An official-format network pickle holding G and G_ema (two networks: a training file)."""
    from tests.official_pickle import write_network_pickle
    G = perturbed_generator("tiny-32", 5)
    root = tmp_path_factory.mktemp("pkl")
    return write_network_pickle(root / "snap.pkl", G=G, G_ema=G, marker=root / "module_src_ran"), G


def _file_tensors(path) -> int:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return len(list(f.keys()))


def test_convert_reports_every_tensor_loaded_and_written(pickle_path, tmp_path):
    pkl, G = pickle_path
    calls = []
    out = convert(pkl, tmp_path / "m.safetensors", progress=lambda *a: calls.append(a))
    n = len(G.state_dict())
    assert _file_tensors(out) == 2 * n                        # G. and G_ema. tensors
    total = 2 * (2 * n)                                       # each loaded once, written once
    assert calls[0] == ("read", 0, total)
    assert sorted(c[0] for c in calls[1:-1]) == ["load G", "load G_ema"]
    assert all(c[1] == n and c[2] == total for c in calls[1:-1])
    assert calls[-1] == ("write", 2 * n, total)
    assert sum(c[1] for c in calls) == total                  # the bar ends full
    # Progress does not change what is written: the converted generator is G, tensor for tensor.
    G2 = load_generator(out)
    for k, v in G.state_dict().items():
        assert torch.equal(G2.state_dict()[k], v), k


def test_bar_and_summary(pickle_path, tmp_path, capsys):
    pkl, G = pickle_path
    n = 2 * len(G.state_dict())
    progress = ConvertProgress("convert snap.pkl", quiet=False)
    try:
        out = convert(pkl, tmp_path / "m.safetensors", progress=progress)
    finally:
        progress.close()
    err = capsys.readouterr().err
    assert "convert snap.pkl" in err and f"{2 * n}/{2 * n} tensors" in err   # closed full (stderr is no TTY)
    line = progress.summary(out)
    m = re.fullmatch(rf"wrote {re.escape(str(out))}: (\d+) tensors, ([\d.]+) MiB in ([\d.]+) s", line)
    assert m, line
    assert int(m.group(1)) == n
    # 2 decimals of MiB: the size is within half a hundredth of the file's.
    assert abs(float(m.group(2)) - out.stat().st_size / 2**20) <= 0.005


def test_quiet_prints_nothing(pickle_path, tmp_path, capsys):
    pkl, _ = pickle_path
    progress = ConvertProgress("convert", quiet=True)
    convert(pkl, tmp_path / "m.safetensors", progress=progress)
    progress.close()
    assert capsys.readouterr().err == ""
    assert progress.tensors > 0                               # still counted for a caller's summary


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "engine.cli", "convert", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def test_cli_bar_summary_and_quiet(pickle_path, tmp_path):
    pkl, G = pickle_path
    n = 2 * len(G.state_dict())
    out = tmp_path / "cli.safetensors"
    res = _cli(pkl, out)
    assert res.returncode == 0, res.stderr
    assert f"{2 * n}/{2 * n} tensors" in res.stderr
    assert re.fullmatch(rf"wrote {re.escape(str(out))}: {n} tensors, [\d.]+ MiB in [\d.]+ s\n", res.stdout)
    res = _cli("-q", pkl, tmp_path / "q.safetensors")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and "tensors" not in res.stderr
    assert _file_tensors(tmp_path / "q.safetensors") == n
    # A bad input still fails with the one-line error (the bar is closed, nothing written).
    res = _cli(tmp_path / "missing.pkl", tmp_path / "x.safetensors")
    assert res.returncode == 2 and "error" in res.stderr and not (tmp_path / "x.safetensors").exists()

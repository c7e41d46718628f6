"""torchrun set-up shared by `digan train` and `digan render`.

torchrun starts one process per rank and describes it in the environment: RANK (0 .. WORLD_SIZE-1,
over all nodes), WORLD_SIZE and LOCAL_RANK (the rank on this node, i.e. which GPU).  Without
torchrun none is set and the process is rank 0 of 1.  Nothing here runs at import time.

    env, device = init_distributed("auto")                       # digan train: NCCL on CUDA, gloo on CPU
    env, device = init_distributed(args.device, backend="gloo", set_device=False)   # digan render

The process group is created only when WORLD_SIZE > 1 (and not twice).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0            # global rank, 0 .. world_size - 1
    world_size: int = 1      # number of ranks over all nodes
    local_rank: int = 0      # rank on this node: the CUDA device index it uses

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"WORLD_SIZE must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK must be in [0, WORLD_SIZE={self.world_size}), got {self.rank}")
        if self.local_rank < 0:
            raise ValueError(f"LOCAL_RANK must be >= 0, got {self.local_rank}")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and final files."""
        return self.rank == 0


def read_env(environ: Optional[Mapping[str, str]] = None) -> DistEnv:
    """DistEnv from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK; absent = 0, 1, 0)."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        text = environ.get(name, default).strip()
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} in the environment is not an integer (set by torchrun)") from None
    return DistEnv(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def rank_device(device: Optional[str], env: DistEnv) -> torch.device:
    """This rank's device: None or 'auto' -> cuda:LOCAL_RANK when CUDA is available, else cpu;
    'cuda' (no index) -> cuda:LOCAL_RANK; anything else as given ('cpu', 'cuda:3')."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", env.local_rank)
    return dev


def init_distributed(device: Optional[str] = "auto", backend: Optional[str] = None,
                     set_device: bool = True) -> Tuple[DistEnv, torch.device]:
    """Reads torchrun's environment, picks this rank's device (rank_device) and, when WORLD_SIZE > 1,
    initialises the default process group; returns (env, device).

    backend: None = NCCL on CUDA, gloo on CPU (training all-reduces gradients on the device);
    'gloo' for collectives on CPU objects only (render's barrier and segment lists).
    set_device: make the CUDA device current (torch.cuda.set_device), so that kernels and NCCL
    land on this rank's GPU."""
    env = read_env()
    dev = rank_device(device, env)
    if dev.type == "cuda" and set_device:
        torch.cuda.set_device(dev)
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"))
    return env, dev


@torch.no_grad()
def allreduce_grads(params: Sequence[torch.nn.Parameter], world_size: int) -> None:
    """Average the gradients of `params` over ranks with one flat all_reduce (every grad must be set)."""
    if world_size <= 1 or not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)                                    # sync point across ranks
    flat /= world_size
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p.grad))

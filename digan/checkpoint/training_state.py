"""The training state of a `digan train` snapshot: optimizers, random streams and progress.

A snapshot is a "training" checkpoint (save_training / load_training: G, D, G_ema under their
prefixes) whose other tensors and metadata hold everything else a resumed run needs to continue
exactly where the saved one stood:

    tensors  opt_G.<param index>.<field>, opt_D.<...>    Adam's per-parameter state (step, exp_avg, ...)
             rng.train                                   the recipe's CPU torch.Generator (same on every rank)
             rng.rank<r>.{torch_cpu, torch_cuda, numpy, python}   rank r's global RNGs, as tensors
    metadata opt_G.param_groups, opt_D.param_groups      JSON
             rng.rank<r>                                 JSON: the non-tensor parts of numpy's/python's states
             train.step, train.cur_nimg, train.elapsed, train.world_size, train.config (TrainConfig JSON),
             train.data_position, train.data_epoch       (the last two for readers: a function of the step)

The global RNGs are restored only by a run with as many ranks as the one that saved them.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ._common import PathLike
from .loading import load_training
from .saving import save_training

# (tensors, JSON-able metadata) of one rank's global RNGs
RngState = Tuple[Dict[str, torch.Tensor], Dict[str, object]]


@dataclass
class TrainingProgress:
    step: int                # steps done
    cur_nimg: int            # videos seen, over all ranks
    elapsed: float           # training seconds so far (all processes of the run)
    world_size: int = 1      # ranks of the run that wrote it
    config: str = "{}"       # the TrainConfig, as JSON
    data_position: int = 0   # next clip position of the sampler's stream (written for readers)
    data_epoch: int = 0      # its epoch

    def to_metadata(self) -> Dict[str, str]:
        return {"train.step": str(self.step), "train.cur_nimg": str(self.cur_nimg),
                "train.elapsed": repr(float(self.elapsed)), "train.world_size": str(self.world_size),
                "train.config": self.config, "train.data_position": str(self.data_position),
                "train.data_epoch": str(self.data_epoch)}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> "TrainingProgress":
        """Missing optional keys take their defaults (snapshots of earlier versions)."""
        return cls(step=int(meta["train.step"]), cur_nimg=int(meta["train.cur_nimg"]),
                   elapsed=float(meta.get("train.elapsed", "0")), world_size=int(meta.get("train.world_size", "1")),
                   config=meta.get("train.config", "{}"), data_position=int(meta.get("train.data_position", "0")),
                   data_epoch=int(meta.get("train.data_epoch", "0")))


# ---- global RNG state <-> tensors ------------------------------------------------------------------

def global_rng_state(device: torch.device) -> RngState:
    """This process's torch (CPU, and `device` when CUDA), numpy and python RNG states."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    np_state = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py_state = random.getstate()
    tensors["python"] = torch.tensor(py_state[1], dtype=torch.int64)
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], py_state[2]]}
    return tensors, meta


def set_global_rng_state(tensors: Dict[str, torch.Tensor], meta: Dict[str, object], device: torch.device) -> None:
    """Inverse of global_rng_state (the CUDA state only where both sides have one)."""
    torch.set_rng_state(tensors["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"], device)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(int(v) for v in tensors["python"].tolist()), gauss_next))


def gather_global_rng_states(device: torch.device, world_size: int) -> List[RngState]:
    """Collective when world_size > 1 (every rank calls it): every rank's global RNG state, by rank."""
    tensors, meta = global_rng_state(device)
    mine = ({k: v.cpu() for k, v in tensors.items()}, meta)
    if world_size == 1:
        return [mine]
    out: List[Optional[RngState]] = [None] * world_size
    dist.all_gather_object(out, mine)                             # sync point across ranks
    return out


# ---- optimizers <-> tensors ------------------------------------------------------------------------

def optimizer_state(optimizers: Mapping[str, torch.optim.Optimizer]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Each optimizer's state as tensors '<name>.<param index>.<field>' plus '<name>.param_groups' JSON."""
    tensors: Dict[str, torch.Tensor] = {}
    meta: Dict[str, str] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        for idx, state in sd["state"].items():
            for k, v in state.items():
                tensors[f"{name}.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
        meta[f"{name}.param_groups"] = json.dumps(sd["param_groups"])
    return tensors, meta


def load_optimizer_state(optimizers: Mapping[str, torch.optim.Optimizer], tensors: Mapping[str, torch.Tensor],
                         meta: Mapping[str, str]) -> None:
    """Inverse of optimizer_state."""
    for name, opt in optimizers.items():
        state: Dict[int, Dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith(name + "."):
                _, idx, field = k.split(".", 2)
                state.setdefault(int(idx), {})[field] = v
        opt.load_state_dict({"state": state, "param_groups": json.loads(meta[f"{name}.param_groups"])})


# ---- whole snapshots -------------------------------------------------------------------------------

def save_training_state(path: PathLike, *, G, D, G_ema, optimizers: Mapping[str, torch.optim.Optimizer],
                        train_rng: torch.Generator, rank_rng_states: List[RngState],
                        progress: TrainingProgress) -> Path:
    """Write a training snapshot (atomically, by save_training); the folder is created if needed.
    rank_rng_states: gather_global_rng_states(), indexed by rank."""
    tensors, meta = optimizer_state(optimizers)
    tensors["rng.train"] = train_rng.get_state()
    for r, (ts, m) in enumerate(rank_rng_states):
        for k, v in ts.items():
            tensors[f"rng.rank{r}.{k}"] = v
        meta[f"rng.rank{r}"] = json.dumps(m)
    meta.update(progress.to_metadata())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # G and D configs go in save_training's g_config / d_config metadata
    return save_training(path, G=G, D=D, G_ema=G_ema, extra_tensors=tensors, extra_metadata=meta)


def load_training_state(path: PathLike, *, G, D, G_ema, optimizers: Mapping[str, torch.optim.Optimizer],
                        train_rng: torch.Generator, rank: int, world_size: int,
                        device: torch.device) -> TrainingProgress:
    """Restore into the given networks, optimizers and generator everything save_training_state wrote
    (and this rank's global RNGs when the run has as many ranks); returns the progress.

    ValueError when `path` is no `digan train` snapshot or its networks' configs differ from these."""
    ckpt = load_training(path)
    meta, tensors = ckpt.metadata, ckpt.extra_tensors
    if "train.step" not in meta or ckpt.G is None or ckpt.D is None or ckpt.G_ema is None:
        raise ValueError(f"{path} is not a training snapshot of `digan train` (no train.step or networks)")
    for module, saved in ((G, ckpt.G), (D, ckpt.D), (G_ema, ckpt.G_ema)):
        if saved.cfg != module.cfg:
            raise ValueError(f"{path}: the snapshot's {type(module).__name__} config differs from this run's")
        module.load_state_dict(saved.state_dict(), strict=True)
    load_optimizer_state(optimizers, tensors, meta)
    train_rng.set_state(tensors["rng.train"])
    progress = TrainingProgress.from_metadata(meta)
    if f"rng.rank{rank}" in meta and progress.world_size == world_size:
        ts = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"rng.rank{rank}.")}
        set_global_rng_state(ts, json.loads(meta[f"rng.rank{rank}"]), device)
    return progress

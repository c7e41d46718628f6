"""digan.checkpoint.training_state: the pieces of a `digan train` snapshot besides the networks.

Whole snapshots (save, resume, continue bit-exactly) are tested through the trainer in test_train.py."""
import random

import numpy as np
import torch

from digan.checkpoint.training_state import (
    TrainingProgress,
    gather_global_rng_states,
    global_rng_state,
    load_optimizer_state,
    optimizer_state,
    set_global_rng_state,
)


def _draws():
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)], random.gauss(0, 1)


def test_global_rng_state_round_trip():
    cpu = torch.device("cpu")
    random.gauss(0, 1)   # leaves a cached second normal in python's state: its gauss_next must survive
    tensors, meta = global_rng_state(cpu)
    expected = _draws()
    _draws()             # move every stream on
    set_global_rng_state(tensors, meta, cpu)
    assert _draws() == expected
    [(gathered, gathered_meta)] = gather_global_rng_states(cpu, world_size=1)
    assert gathered.keys() == tensors.keys() and gathered_meta == global_rng_state(cpu)[1]


def test_optimizer_state_round_trip():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.Adam([w], lr=0.01, betas=(0.0, 0.99))
    w.grad = torch.randn(3, 2)
    opt.step()
    tensors, meta = optimizer_state({"opt_G": opt})
    assert set(tensors) == {"opt_G.0.step", "opt_G.0.exp_avg", "opt_G.0.exp_avg_sq"}
    fresh = torch.optim.Adam([w], lr=1.0)
    load_optimizer_state({"opt_G": fresh}, tensors, meta)
    assert fresh.param_groups[0]["lr"] == 0.01 and fresh.param_groups[0]["betas"] == [0.0, 0.99]
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(fresh.state[w][k], opt.state[w][k])


def test_training_progress_metadata():
    p = TrainingProgress(step=12, cur_nimg=48, elapsed=3.25, world_size=2, config='{"batch": 4}',
                         data_position=48, data_epoch=1)
    meta = p.to_metadata()
    assert meta["train.step"] == "12" and meta["train.elapsed"] == "3.25" and meta["train.data_epoch"] == "1"
    assert TrainingProgress.from_metadata(meta) == p
    # a snapshot of an earlier version: only the step and the video count
    old = TrainingProgress.from_metadata({"train.step": "3", "train.cur_nimg": "12"})
    assert (old.step, old.cur_nimg, old.elapsed, old.world_size) == (3, 12, 0.0, 1)

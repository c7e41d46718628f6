"""digan.distributed: torchrun's environment, the rank's device, gradient averaging (one process).

Two real ranks are exercised by the torchrun tests of test_train.py and test_cli.py."""
import re

import pytest
import torch

from digan.distributed import DistEnv, allreduce_grads, init_distributed, rank_device, read_env


def test_read_env_defaults_and_torchrun_values():
    assert read_env({}) == DistEnv(0, 1, 0)
    env = read_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": " 1 "})
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (3, 4, 1, False)
    assert read_env({}).is_main


@pytest.mark.parametrize("environ, message", [
    ({"RANK": "one"}, "RANK='one'"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be >= 1"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK must be in [0, WORLD_SIZE=2)"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK must be >= 0"),
])
def test_read_env_rejects_bad_values(environ, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        read_env(environ)


def test_rank_device_maps_cuda_to_local_rank():
    env = DistEnv(5, 8, 1)
    # torch.device("cuda", k) is only a description: no GPU is needed to build one
    assert rank_device("cuda", env) == torch.device("cuda", 1)
    assert rank_device("cuda:3", env) == torch.device("cuda", 3)
    assert rank_device("cpu", env) == torch.device("cpu")
    expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert rank_device(None, env) == rank_device("auto", env) == expected


def test_init_distributed_single_process_makes_no_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env, dev = init_distributed("cpu")
    assert env == DistEnv() and dev == torch.device("cpu")
    assert not torch.distributed.is_initialized()


def test_allreduce_grads_is_a_no_op_for_one_rank():
    p = torch.nn.Parameter(torch.randn(3, 2))
    p.grad = torch.randn(3, 2)
    before = p.grad.clone()
    allreduce_grads([p], world_size=1)
    assert torch.equal(p.grad, before)

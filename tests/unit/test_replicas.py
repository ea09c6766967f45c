"""check_replicas_agree across three real gloo processes (spawned, CPU)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, bad_rank: int | None, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from sparsify.errors import TrainingError
        from sparsify.trainers.common import check_replicas_agree

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
        if rank == bad_rank:
            with torch.no_grad():
                model[1].bias[0] += 1e-3
        try:
            check_replicas_agree(model)
            results.put((rank, "ok"))
        except TrainingError as error:
            results.put((rank, error.message))
    finally:
        dist.destroy_process_group()


def _run(bad_rank):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    mp.start_processes(_worker, args=(3, _free_port(), bad_rank, results), nprocs=3,
                       join=True, start_method="spawn")
    return dict(results.get(timeout=30) for _ in range(3))


@pytest.mark.timeout(300)
def test_identical_replicas_pass_and_a_diverged_rank_is_named_on_every_rank():
    assert _run(None) == {0: "ok", 1: "ok", 2: "ok"}
    messages = _run(2)
    for rank in range(3):  # every rank stops, and all name rank 2 against rank 0
        assert messages[rank].startswith("Rank 2's '1.bias' differs from rank 0's"), messages


def test_single_process_is_not_checked():
    from sparsify.trainers.common import check_replicas_agree

    check_replicas_agree(nn.Linear(2, 2))  # no process group: nothing to compare

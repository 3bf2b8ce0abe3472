"""This process among torch.distributed's ranks (``run_recbole --nproc``, torchrun), for the code below the trainers
that shares on-disk caches (the dataset, the catalogue's embeddings and index). Without a process group a process
is rank 0 of 1 and everything here is a no-op; the trainers' own duties are in recbole_gen/trainer/distributed.py.
"""
import contextlib

import numpy as np
import torch.distributed as dist


def rank_and_world():
    """``(rank, world size)`` of this process; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier():
    if rank_and_world()[1] > 1:
        dist.barrier()


def broadcast_from_rank0(obj):
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def rank0_first():
    """Rank 0 runs the block first (filling an on-disk cache), the other ranks after it (reading the cache)."""
    rank, world = rank_and_world()
    if world > 1 and rank != 0:
        dist.barrier()
    yield
    if world > 1 and rank == 0:
        dist.barrier()


def split_over_ranks(compute):
    """``compute(indices, inputs) -> rows`` with its rows split over the ranks: rank r computes rows r, r + world, ...
    and every rank returns all of them in order (all-gathered). Every rank calls it with the same arguments."""

    def run(indices, inputs):
        rank, world = rank_and_world()
        if world == 1:
            return np.asarray(compute(indices, inputs))
        mine = np.asarray(compute(indices[rank::world], inputs[rank::world])) if len(indices) > rank else None
        parts = [None] * world
        dist.all_gather_object(parts, mine)
        first = next(p for p in parts if p is not None)
        rows = np.empty((len(indices),) + first.shape[1:], dtype=first.dtype)
        for r, part in enumerate(parts):
            if part is not None:
                rows[r::world] = part
        return rows

    return run

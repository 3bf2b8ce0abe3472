"""Evaluation on several processes: every metric computed once, on all users, by every rank.

RecBole 1.2.1 averages each rank's finished metrics (``Trainer._map_reduce``), weighted by its rows, and its
``DistributedSampler`` pads the last ranks with duplicates of the first users. That is close for Hit or NDCG but
wrong for FD, ImageCoverage or Diversity, which are not means over users. Instead each rank's collected rows are
gathered, the padding duplicates dropped (with ``shuffle=False``, rank ``r``'s ``j``-th row is the sampler's
position ``r + j * world``; positions past the evaluated row count are padding), the rows put back in the
single-process order, the running sums added, and the evaluator runs on that whole data struct.
"""
import torch
import torch.distributed as dist

from recbole_gen.trainer.distributed import rank_of, world_size

#: per-row entries of RecBole's collector (concatenated batch after batch)
RECBOLE_ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


def row_positions(config, first_row, rows):
    """The sampler positions of a rank's rows ``first_row .. first_row + rows - 1`` (the rank's own count)."""
    return rank_of(config) + world_size(config) * (first_row + torch.arange(rows))


def gather_struct(struct, row_keys, sum_keys, position_key, total_rows):
    """``struct`` (a RecBole ``DataStruct``) with the rows of every rank: ``row_keys`` concatenated in position
    order without the padding (positions ``>= total_rows``), ``sum_keys`` added over the ranks, every other entry
    as this rank has it (RecBole's ``data.*`` counts come from the training split, the same on every rank)."""
    local = {key: struct[key] for key in struct._data_dict if key in row_keys or key in sum_keys}
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    positions = torch.cat([part[position_key] for part in parts])
    order = positions.argsort()
    order = order[positions[order] < total_rows]
    for key in local:
        if key in sum_keys:
            struct.set(key, sum(part[key] for part in parts))
        else:
            struct.set(key, torch.cat([part[key] for part in parts])[order])
    return struct

"""Equal scores ranked in a seeded random item order, never by item id.

RecBole numbers items in order of first appearance in the ``.inter`` file: user by user, each user's validation and
test rows included. A stable sort ranks equal scores by that number, and so, in effect, does ``torch.topk`` in
RecBole's evaluation (over the main job's 3,656 items it kept the lowest ids of a tied block), which tells a model
with tied scores (Pop's equal counts, CategoryPop's equal keys, a plan head before training) which of two equally
scored items the held-out users took: on the main job's validation split CategoryPop's Hit@10 was 0.444 by id and
0.436 in a seeded order (benchmarks/baselines/README.md). Every ranking of a catalogue (the evaluation's top-k, a
ranker's top images, a drawn twin's items, the gallery) runs over the items permuted by :func:`tie_order` instead,
so which of several tied items come first depends on the seed alone.
"""
import torch


def tie_order(n, seed):
    """The order in which equal scores of ``n`` items are ranked: a permutation seeded by ``seed`` (the config's)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))


def top_items(scores, k, order):
    """``[B, k]`` items (columns) of ``scores`` ``[B, n]`` with the highest scores: ``torch.topk`` over the columns
    permuted by ``order``, so which tied items it keeps depends on their place in ``order``, not on their ids."""
    order = order.to(scores.device)
    return order[torch.topk(scores[:, order], k, dim=1).indices]

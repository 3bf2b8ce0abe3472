"""Catalogue scores from generated images: a generator's ranking of the catalogue.

``reduce='interleave'`` (the default) ranks every image's nearest items in turn: each image's nearest item first
(best cosine first), then each image's second nearest, and so on, so a user shown ``n`` images has those images'
nearest items as its top ``n`` and RecBole's Hit@n means "one of the n images shows the true next item", as a
ranker's Hit@n means "one of its n items is it". ``max`` ranks by each item's best cosine to the user's images,
``mean`` by the mean. Items the user may not get again (``exclude``: consumed items under ``repeatable: False``)
are left out before the ranking, so an image whose nearest item is consumed shows its nearest other item. On a
large catalogue the evaluation keeps only each user's top items from the index search (:func:`catalogue_topk`,
handed on as :class:`TopKScores`) instead of a ``[users, item_num]`` matrix.
"""
from dataclasses import dataclass

import torch

from recbole_gen.retrieval.index import as_catalogue_index

REDUCTIONS = ("interleave", "max", "mean")


def _check_samples(sample_emb, index):
    if not isinstance(sample_emb, torch.Tensor) or sample_emb.dim() != 3:
        shape = tuple(sample_emb.shape) if hasattr(sample_emb, "shape") else type(sample_emb).__name__
        raise ValueError(f"sample embeddings must be FloatTensor[batch, num_samples, dim], got {shape}")
    if sample_emb.shape[-1] != index.dim:
        raise ValueError(
            f"sample embeddings have dimension {sample_emb.shape[-1]}, the catalogue index has {index.dim}: "
            "embed generated images with the same encoder as the catalogue (ImageCatalogue.encode)"
        )


def catalogue_scores(sample_emb, index, reduce="interleave", sample_mask=None, exclude=None):
    """Score every catalogue item for every user.

    Args:
        sample_emb: ``FloatTensor[B, n, D]``, L2-normalised embeddings of each user's ``n`` generated
            images (from the evaluation encoder, e.g. ``ImageCatalogue.encode``).
        index: :class:`~recbole_gen.retrieval.index.CatalogueIndex` (or ``ImageCatalogue``).
        reduce: ``'interleave'`` (each image's nearest items in turn), ``'max'`` (best cosine over samples) or
            ``'mean'``.
        sample_mask: optional ``BoolTensor[B, n]``, ``False`` for samples to ignore (e.g. failed
            generations); each user needs at least one.
        exclude: optional ``LongTensor[B, c]`` of items each user may not be shown (0-padded).

    Returns:
        ``FloatTensor[B, item_num]`` on ``sample_emb``'s device: cosine scores in ``[-1, 1]`` (``interleave``:
        ``-rank`` plus, breaking ties, the cosine to the image where the item ranks best, in ``[0, 1)``), ``-inf`` for
        the padding item 0, items without an image and excluded items.
    """
    index = as_catalogue_index(index)
    _check_samples(sample_emb, index)
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got '{reduce}'")
    batch, n, dim = sample_emb.shape
    full = index.full_scores(sample_emb.reshape(batch * n, dim)).view(batch, n, -1)
    invalid = torch.isinf(full[:, :1, :])  # [B, 1, item_num]: padding / no image
    if exclude is not None:
        invalid = invalid.clone()
        invalid.view(batch, -1).scatter_(1, exclude.to(full.device).long(), True)
        full = full.masked_fill(invalid, float("-inf"))
    if sample_mask is not None:
        mask = sample_mask.to(full.device).bool().view(batch, n, 1)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("sample_mask leaves a user without any generated sample")
        full = full.masked_fill(~mask, 0.0 if reduce == "mean" else float("-inf"))
    if reduce == "interleave":
        ranks = torch.empty_like(full)
        order = torch.argsort(full, dim=2, descending=True, stable=True)
        ranks.scatter_(2, order, torch.arange(full.shape[2], device=full.device, dtype=full.dtype).expand_as(full))
        if sample_mask is not None:
            ranks = ranks.masked_fill(~mask, float("inf"))
        best = ranks.min(dim=1).values
        cosine = full.masked_fill(ranks != best.unsqueeze(1), float("-inf")).max(dim=1).values  # at that rank
        scores = -best + (cosine + 1) / 3  # the rank decides; equal ranks by the cosine there
    elif reduce == "max":
        scores = full.max(dim=1).values
    else:
        counts = n if sample_mask is None else sample_mask.to(full.device).float().sum(1, keepdim=True)
        scores = full.masked_fill(torch.isinf(full), 0.0).sum(dim=1) / counts
    return scores.masked_fill(invalid.squeeze(1), float("-inf"))


@dataclass
class TopKScores:
    """A ``[batch, item_num]`` score matrix of which only each row's best ``k`` are known, best first (``items``
    -1 = no item): what a generator's evaluation hands RecBole's collector instead of the dense matrix."""

    scores: torch.Tensor
    items: torch.Tensor
    item_num: int

    @property
    def shape(self):
        return (self.items.shape[0], self.item_num)


def catalogue_topk(sample_emb, index, k, reduce="interleave", exclude=None):
    """Top-``k`` catalogue items through FAISS (no full score row): the ranking of :func:`catalogue_scores` for
    ``reduce`` ``'interleave'`` or ``'max'``, ``exclude`` included.

    Each image's ``k + c`` nearest items are searched (``c``: the most items a row excludes), so ``k`` remain once
    the excluded ones are dropped; then each item's best position in an image's list (ties: the cosine there) or its
    best cosine decides. Exact for both: the top ``k`` of either take at most ``k`` items from any one image's list.
    Returns ``(scores FloatTensor[B, k], item_ids LongTensor[B, k])``: each item's cosine (``max``: its best;
    ``interleave``: where it ranks best), -1 items where fewer than ``k`` are found.
    """
    if reduce not in ("interleave", "max"):
        raise ValueError(f"the index search ranks by 'interleave' or 'max', not '{reduce}': set gen_rank_from: scores")
    index = as_catalogue_index(index)
    _check_samples(sample_emb, index)
    batch, n, dim = sample_emb.shape
    excluded = [set() for _ in range(batch)] if exclude is None else \
        [set(row) - {0} for row in exclude.cpu().tolist()]
    depth = k + max(len(row) for row in excluded)
    scores, ids = index.search(sample_emb.reshape(batch * n, dim), depth)
    scores, ids = scores.view(batch, n, depth).tolist(), ids.view(batch, n, depth).tolist()
    out_scores = torch.full((batch, k), float("-inf"))
    out_ids = torch.full((batch, k), -1, dtype=torch.long)
    for row in range(batch):
        best = {}  # item -> (its best position in an image's list of kept items, the cosine there or its best)
        for image_scores, image_ids in zip(scores[row], ids[row]):
            position = 0
            for score, item in zip(image_scores, image_ids):
                if item < 0 or item in excluded[row]:
                    continue
                seen = best.get(item, (position, score))
                if reduce == "max" or position == seen[0]:
                    best[item] = (min(seen[0], position), max(seen[1], score))
                elif position < seen[0]:
                    best[item] = (position, score)
                position += 1
        key = (lambda entry: (entry[1][0], -entry[1][1])) if reduce == "interleave" else (lambda entry: -entry[1][1])
        for col, (item, (_, score)) in enumerate(sorted(best.items(), key=key)[:k]):
            out_scores[row, col], out_ids[row, col] = score, item
    return out_scores, out_ids


def rank_fusion(*scores, k=60):
    """Reciprocal-rank fusion of score matrices ``[B, item_num]`` (``sum 1 / (k + rank)``): combines rankings whose
    scores live on different scales (image cosines, plan logits); ``-inf`` items stay ``-inf``."""
    fused = None
    for matrix in scores:
        ranks = torch.empty_like(matrix)
        order = torch.argsort(matrix, dim=1, descending=True)
        ranks.scatter_(1, order, torch.arange(1, matrix.shape[1] + 1, device=matrix.device, dtype=matrix.dtype).expand_as(matrix))
        part = 1.0 / (k + ranks)
        fused = part if fused is None else fused + part
    return fused.masked_fill(torch.stack([torch.isneginf(m) for m in scores]).any(0), float("-inf"))

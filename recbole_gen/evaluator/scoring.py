"""Catalogue scores from generated images: what a generator's ``full_sort_predict`` returns.

Each catalogue item's score is its best (``reduce='max'``, default) or mean (``reduce='mean'``)
cosine similarity to the user's generated images, so RecBole's Hit@K / NDCG@K / MRR@K mean "the true
next item is among the K catalogue items nearest to the generated images". On a large catalogue the
evaluation keeps only each user's top items from the index search (:func:`catalogue_topk`, handed on as
:class:`TopKScores`) instead of a ``[users, item_num]`` matrix.
"""
from dataclasses import dataclass

import torch

from recbole_gen.retrieval.index import as_catalogue_index

REDUCTIONS = ("max", "mean")


def _check_samples(sample_emb, index):
    if not isinstance(sample_emb, torch.Tensor) or sample_emb.dim() != 3:
        shape = tuple(sample_emb.shape) if hasattr(sample_emb, "shape") else type(sample_emb).__name__
        raise ValueError(f"sample embeddings must be FloatTensor[batch, num_samples, dim], got {shape}")
    if sample_emb.shape[-1] != index.dim:
        raise ValueError(
            f"sample embeddings have dimension {sample_emb.shape[-1]}, the catalogue index has {index.dim}: "
            "embed generated images with the same encoder as the catalogue (ImageCatalogue.encode)"
        )


def catalogue_scores(sample_emb, index, reduce="max", sample_mask=None):
    """Score every catalogue item for every user.

    Args:
        sample_emb: ``FloatTensor[B, n, D]``, L2-normalised embeddings of each user's ``n`` generated
            images (from the evaluation encoder, e.g. ``ImageCatalogue.encode``).
        index: :class:`~recbole_gen.retrieval.index.CatalogueIndex` (or ``ImageCatalogue``).
        reduce: ``'max'`` (best cosine over samples) or ``'mean'``.
        sample_mask: optional ``BoolTensor[B, n]``, ``False`` for samples to ignore (e.g. failed
            generations); each user needs at least one.

    Returns:
        ``FloatTensor[B, item_num]`` on ``sample_emb``'s device: cosine scores in ``[-1, 1]``,
        ``-inf`` for the padding item 0 and items without an image.
    """
    index = as_catalogue_index(index)
    _check_samples(sample_emb, index)
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got '{reduce}'")
    batch, n, dim = sample_emb.shape
    full = index.full_scores(sample_emb.reshape(batch * n, dim)).view(batch, n, -1)
    invalid = torch.isinf(full[:, :1, :])  # [B, 1, item_num]: padding / no image
    if sample_mask is not None:
        mask = sample_mask.to(full.device).bool().view(batch, n, 1)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("sample_mask leaves a user without any generated sample")
        if reduce == "max":
            full = full.masked_fill(~mask, float("-inf"))
        else:
            full = full.masked_fill(~mask, 0.0)
    if reduce == "max":
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


def catalogue_topk(sample_emb, index, k):
    """Top-``k`` catalogue items by max-over-samples cosine, through FAISS (no full score row).

    Exact for ``reduce='max'``: an item in the top-``k`` of the maximum is in the top-``k`` of the
    sample that attains it. Returns ``(scores FloatTensor[B, k], item_ids LongTensor[B, k])``.
    """
    index = as_catalogue_index(index)
    _check_samples(sample_emb, index)
    batch, n, dim = sample_emb.shape
    scores, ids = index.search(sample_emb.reshape(batch * n, dim), k)
    scores, ids = scores.view(batch, n * k), ids.view(batch, n * k)
    # keep each item's best score once, then the best k
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    scores, ids = scores.gather(1, order), ids.gather(1, order)
    out_scores = torch.full((batch, k), float("-inf"))
    out_ids = torch.full((batch, k), -1, dtype=torch.long)
    for row in range(batch):
        seen, col = set(), 0
        for score, item in zip(scores[row].tolist(), ids[row].tolist()):
            if item < 0 or item in seen:
                continue
            seen.add(item)
            out_scores[row, col], out_ids[row, col] = score, item
            col += 1
            if col == k:
                break
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

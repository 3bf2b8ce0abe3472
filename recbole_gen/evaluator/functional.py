"""Per-user image metrics, the same function for generators and rankers.

A generator's "samples" are the embeddings of the images it drew for a user; a ranker's are the
catalogue embeddings of its top-n recommended items. All embeddings are L2-normalised and come
from one evaluation encoder, so every dot product is a cosine.

Per user (``NaN`` where a value is undefined; aggregates skip NaN):

* ``target_sim``: mean over samples of cos(sample, true next item).            higher is better
* ``target_sim_best``: max over samples of that cosine (best-of-n).            higher is better
* ``history_sim``: mean over samples and history items of their cosine.        higher = closer to the past
* ``future_sim``: mean over samples and the user's *later* items (after the target;
  for the validation phase: the test item) of their cosine; NaN when none.     higher is better
* ``diversity``: mean over sample pairs of (1 - cos); NaN with one sample.     higher = more varied
* ``novelty``: mean over samples of (1 - max cos to any catalogue item);
  0 for an image identical to a catalogue item.                               higher = newer
* ``nearest``: each sample's nearest catalogue item id (for catalogue coverage).
* ``repeat_rate``: share of samples whose nearest catalogue item the user already took (consumed);
  NaN without the consumed items.                                              lower = fewer repeats
* ``plan_fidelity``: share of a generator's samples whose nearest catalogue item is the item it planned
  (or an item with the planned item's very image: the emoji font has pixel-identical duplicates);
  NaN for samples without an item plan.                                        higher = draws what it meant
* ``oracle_utility``: mean over samples of a judge's utility (simulated users), NaN without one.

Items without an image (zero embedding) count as undefined: a target without an image gives NaN.
"""
import numpy as np
import torch

from recbole_gen.retrieval.index import as_catalogue_index


def _nanmean(values, mask, dim):
    counts = mask.sum(dim)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim)
    return torch.where(counts > 0, total / counts.clamp(min=1), torch.full_like(total, float("nan")))


def _gather(catalogue_emb, ids):
    """Embeddings of ``ids`` (any shape, 0 / negative = none) and a mask of the defined ones."""
    ids = ids.long().to(catalogue_emb.device)
    safe = ids.clamp(min=0)
    emb = catalogue_emb[safe]
    defined = (ids > 0) & (emb.norm(dim=-1) > 0)
    return emb, defined


def image_metrics(sample_emb, target_ids, history_ids, future_ids, catalogue_emb, index=None,
                  sample_mask=None, user_ids=None, judge=None, consumed_ids=None, positions=None, plan_ids=None):
    """Per-user image metrics for one batch.

    Args:
        sample_emb: ``FloatTensor[B, n, D]`` generated-image (or recommended-item) embeddings.
        target_ids: ``LongTensor[B]`` true next item per user (0 = none).
        history_ids: ``LongTensor[B, L]`` history item ids, 0-padded (RecBole's ``item_id_list``), or None.
        future_ids: ``LongTensor[B, F]`` later item ids, 0-padded, or None.
        catalogue_emb: ``FloatTensor[item_num, D]`` catalogue embeddings (row 0 / no image = zeros).
        index: optional :class:`CatalogueIndex` over ``catalogue_emb`` for nearest items / novelty
            (built exactly if absent).
        sample_mask: optional ``BoolTensor[B, n]``, False for samples to ignore.
        user_ids, judge: optional ``judge(user_ids, sample_emb, nearest_ids, positions, consumed_ids) ->
            FloatTensor[B, n]`` utilities of each sample (e.g. :class:`~recbole_gen.evaluator.oracle.KNNOracleJudge`).
        consumed_ids: ``LongTensor[B, c]`` items each user took before the target, 0-padded, or None.
        positions: ``LongTensor[B]`` the target's index in the user's sequence (for the judge), or None.
        plan_ids: ``LongTensor[B, n]`` the item each sample was drawn as (-1: none), or None.

    Returns:
        dict of tensors on CPU: ``target_sim, target_sim_best, history_sim, future_sim, diversity,
        novelty, repeat_rate, plan_fidelity, oracle_utility`` (``FloatTensor[B]``) and ``nearest``
        (``LongTensor[B, n]``).
    """
    if sample_emb.dim() != 3:
        raise ValueError(f"sample_emb must be [batch, num_samples, dim], got {tuple(sample_emb.shape)}")
    catalogue_emb = torch.as_tensor(catalogue_emb).float()
    if sample_emb.shape[-1] != catalogue_emb.shape[-1]:
        raise ValueError(
            f"sample embeddings have dimension {sample_emb.shape[-1]} but catalogue embeddings {catalogue_emb.shape[-1]}: "
            "use one encoder for both"
        )
    samples = sample_emb.detach().float().cpu()
    catalogue_emb = catalogue_emb.cpu()
    batch, n, _ = samples.shape
    smask = torch.ones(batch, n, dtype=torch.bool) if sample_mask is None else sample_mask.cpu().bool()

    target_emb, target_ok = _gather(catalogue_emb, target_ids.view(batch))
    cos_t = torch.einsum("bnd,bd->bn", samples, target_emb)
    ok_t = smask & target_ok.view(batch, 1)
    out = {
        "target_sim": _nanmean(cos_t, ok_t, 1),
        "target_sim_best": torch.where(ok_t.any(1), cos_t.masked_fill(~ok_t, float("-inf")).max(1).values,
                                       torch.tensor(float("nan"))),
    }
    for key, ids in (("history_sim", history_ids), ("future_sim", future_ids)):
        if ids is None or ids.numel() == 0:
            out[key] = torch.full((batch,), float("nan"))
            continue
        emb, ok = _gather(catalogue_emb, ids.view(batch, -1).cpu())
        cos = torch.einsum("bnd,bld->bnl", samples, emb)
        out[key] = _nanmean(cos.flatten(1), (smask.unsqueeze(2) & ok.unsqueeze(1)).flatten(1), 1)

    if n > 1:
        pair = torch.einsum("bnd,bmd->bnm", samples, samples)
        upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1).unsqueeze(0)
        pair_ok = upper & smask.unsqueeze(2) & smask.unsqueeze(1)
        out["diversity"] = _nanmean((1 - pair).flatten(1), pair_ok.flatten(1), 1)
    else:
        out["diversity"] = torch.full((batch,), float("nan"))

    if index is None:
        from recbole_gen.retrieval.index import CatalogueIndex

        index = CatalogueIndex(catalogue_emb)
    index = as_catalogue_index(index)
    best, nearest = index.search(samples.reshape(batch * n, -1), 1)
    best, nearest = best.view(batch, n), nearest.view(batch, n)
    novelty = (1 - best).clamp(min=0)
    novelty = torch.where(novelty < 1e-5, torch.zeros_like(novelty), novelty)  # float32 round-off of cos=1
    out["novelty"] = _nanmean(novelty, smask, 1)
    out["nearest"] = torch.where(smask, nearest, torch.full_like(nearest, -1))
    if consumed_ids is not None:
        consumed = consumed_ids.view(batch, -1).cpu()
        repeat = ((nearest.unsqueeze(2) == consumed.unsqueeze(1)) & (consumed.unsqueeze(1) > 0)).any(2)
        out["repeat_rate"] = _nanmean(repeat.float(), smask, 1)
    else:
        out["repeat_rate"] = torch.full((batch,), float("nan"))
    out["plan_fidelity"] = torch.full((batch,), float("nan"))
    if plan_ids is not None:
        plans = plan_ids.view(batch, n).cpu()
        planned = smask & (plans > 0)
        same_image = (catalogue_emb[nearest.clamp(min=0)] * catalogue_emb[plans.clamp(min=0)]).sum(-1) > 1 - 1e-5
        out["plan_fidelity"] = _nanmean(((nearest == plans) | same_image).float(), planned, 1)

    if judge is not None:
        utility = torch.as_tensor(judge(user_ids, samples, nearest, positions, consumed_ids)).float().cpu().view(batch, n)
        out["oracle_utility"] = _nanmean(utility, smask & ~torch.isnan(utility), 1)
    else:
        out["oracle_utility"] = torch.full((batch,), float("nan"))
    return out


def coverage(nearest_ids, num_items):
    """Fraction of catalogue items (``num_items`` valid items) that are the nearest item of at
    least one sample of some user. ``nearest_ids``: LongTensor of any shape, -1 = none."""
    ids = torch.as_tensor(nearest_ids).flatten()
    ids = ids[ids > 0]
    return float(torch.unique(ids).numel()) / max(1, int(num_items))


# --- Frechet distance ------------------------------------------------------------------------


def gaussian_stats(features):
    """Mean and (unbiased) covariance of ``[N, d]`` features, float64 numpy."""
    x = np.asarray(features, dtype=np.float64)
    mu = x.mean(0)
    sigma = np.cov(x, rowvar=False) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))
    return mu, np.atleast_2d(sigma)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)`` (symmetric eigendecompositions,
    stable for singular covariances)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"Frechet distance of Gaussians of different dimensions: {mu1.shape} vs {mu2.shape}")
    values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt))  # no -0.0 from round-off


class FrechetStats:
    """Running sums for the Fréchet distance, kept as one tensor row per batch so that RecBole's
    collector can concatenate them: ``[count, sum (d), sum of outer products (d*d)]`` for the
    generated and the real side (float64)."""

    @staticmethod
    def row(generated, real):
        gen = generated.detach().double().cpu().reshape(-1, generated.shape[-1])
        real = real.detach().double().cpu().reshape(-1, real.shape[-1])

        def side(x):
            return torch.cat([torch.tensor([float(len(x))], dtype=torch.float64), x.sum(0), (x.T @ x).flatten()])

        return torch.stack([side(gen), side(real)]).unsqueeze(0)  # [1, 2, 1 + d + d*d]

    @staticmethod
    def distance(rows):
        total = rows.double().sum(0)  # [2, 1 + d + d*d]
        stats = []
        for side in total:
            count = side[0].item()
            d = int(round((-1 + np.sqrt(1 + 4 * (len(side) - 1))) / 2))
            if count < 2:
                return float("nan")
            mean = (side[1:1 + d] / count).numpy()
            second = side[1 + d:].view(d, d).numpy() / count
            cov = (second - np.outer(mean, mean)) * count / (count - 1)
            stats += [mean, cov]
        return frechet_distance(stats[0], stats[1], stats[2], stats[3])

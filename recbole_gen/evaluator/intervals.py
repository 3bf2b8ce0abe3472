"""Per-user evaluation results, and every metric recomputed on resampled users: what bootstrap intervals are made of.

RecBole's evaluator returns one number per metric. :func:`user_values` takes the data struct of an evaluation
(``ImageCollector.last_struct``) apart into each user's share of each metric:

* RecBole's top-k metrics (Hit, NDCG, MRR, Recall, Precision, MAP): ``metric_info`` gives every user's value at
  every cut-off from ``rec.topk``, exactly what RecBole averages;
* the image metrics that are means over users (TargetSim, Novelty, OracleUtility, ...): their ``gen.*`` tensors;
* the set-level ImageCoverage and FD: each user's nearest catalogue items, and each user's FD features (kept by
  the collector with ``eval_fd_per_user``: ``eval_fd_dim`` floats per image, so memory grows with users x images);
* each user's target's interactions in the training split (:data:`TARGET_COUNT`), by which users are sliced into
  cold, tail and head targets (:func:`recbole_gen.comparison.bootstrap.slices`).

Users are sorted by id, so two models evaluated on the same split line up user for user (a paired comparison).
:func:`resampled` recomputes every metric on resampled user sets (rows of an index matrix).
"""
import inspect

import numpy as np
import torch
from recbole.evaluator.base_metric import TopkMetric
from recbole.evaluator.register import metrics_dict

from recbole_gen.evaluator.collector import TARGET_COUNT, USER
from recbole_gen.evaluator.metrics import FD, ImageCoverage, ImageMetric

MEAN, NEAREST, CATALOGUE, FD_GENERATED, FD_REAL = "mean/", "imagecoverage/nearest", "imagecoverage/items", \
    "fd/generated", "fd/real"


def user_values(struct, config):
    """``{"user": ids, "mean/<metric>": values [U], ...}``: numpy arrays, one row per user in user-id order (NaN
    where a user's value is undefined), for every metric of ``config['metrics']`` that is a mean over users or
    ImageCoverage / FD; other RecBole metrics (ItemCoverage, GAUC, ...) have no per-user form here."""
    order = np.argsort(struct.get(USER).numpy(), kind="stable")
    values = {"user": struct.get(USER).numpy()[order]}
    if TARGET_COUNT in struct:
        values[TARGET_COUNT] = struct.get(TARGET_COUNT).numpy()[order]
    for name in [str(m).lower() for m in config["metrics"]]:
        metric = metrics_dict[name](config)
        if isinstance(metric, TopkMetric):
            pos_index, pos_len = metric.used_info(struct)
            wants_len = len(inspect.signature(metric.metric_info).parameters) > 1
            per_k = metric.metric_info(pos_index, pos_len) if wants_len else metric.metric_info(pos_index)
            for k in config["topk"]:
                values[f"{MEAN}{name}@{k}"] = per_k[order, k - 1].astype(np.float64)
        elif isinstance(metric, ImageCoverage):
            values[NEAREST] = struct.get("gen.nearest").numpy()[order]
            values[CATALOGUE] = struct.get("gen.num_catalogue_items").numpy()[:1]
        elif isinstance(metric, FD):
            if "gen.fd_generated" in struct:
                values[FD_GENERATED] = struct.get("gen.fd_generated").numpy()[order]
                values[FD_REAL] = struct.get("gen.fd_real").numpy()[order]
        elif isinstance(metric, ImageMetric):
            values[f"{MEAN}{name}"] = struct.get(metric.key).double().numpy()[order]
    return values


def resampled(values, index):
    """Every metric of ``values`` (from :func:`user_values`) on each resampled user set: ``index`` is an
    ``int [B, U]`` matrix of user positions (with repeats, as a bootstrap draws them); returns ``{metric: [B]}``."""
    out = {}
    for key, per_user in values.items():
        if key.startswith(MEAN):
            picked = per_user[index]
            defined = ~np.isnan(picked)
            count = defined.sum(1)
            total = np.where(defined, picked, 0.0).sum(1)
            out[key[len(MEAN):]] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if NEAREST in values:
        out["imagecoverage"] = _coverage(values[NEAREST], int(values[CATALOGUE][0]), index)
    if FD_GENERATED in values:
        out["fd"] = _frechet(values[FD_GENERATED], values[FD_REAL], index)
    return out


def _coverage(nearest, num_items, index):
    """Distinct nearest catalogue items of the resampled users' images, per resample, over ``num_items``."""
    picked = nearest[index].reshape(len(index), -1)
    rows = np.broadcast_to(np.arange(len(index))[:, None], picked.shape)
    pairs = np.unique(np.stack([rows[picked > 0], picked[picked > 0]]), axis=1)
    return np.bincount(pairs[0], minlength=len(index)) / max(1, num_items)


def _frechet(generated, real, index, chunk=16):
    """FD between the resampled users' images and their true next items (NaN rows left out), per resample: each
    user's features weighted by how often the resample drew them, then :func:`frechet_from_moments`.

    The moments are summed in float32 (3x faster than float64; 1,000 resamples are most of a benchmark row's
    evaluation time) after moving both sides by their joint mean, which leaves FD unchanged and keeps the
    second moments free of cancellation; the distance itself is computed in float64."""
    gen = torch.from_numpy(generated.reshape(-1, generated.shape[-1])).double()
    gen_user = torch.arange(len(generated)).repeat_interleave(generated.shape[1])
    real = torch.from_numpy(real).double()
    gen_keep, real_keep = ~torch.isnan(gen).any(1), ~torch.isnan(real).any(1)
    gen, gen_user, real = gen[gen_keep], gen_user[gen_keep], torch.nan_to_num(real)
    centre = torch.cat([gen, real[real_keep]]).mean(0)
    gen, real = (gen - centre).float(), ((real - centre) * real_keep[:, None]).float()
    counts = torch.stack([torch.bincount(torch.from_numpy(row), minlength=len(real)) for row in index]).float()
    out = []
    for part in torch.split(counts, chunk):
        moments = [_weighted_moments(gen, part[:, gen_user]), _weighted_moments(real, part * real_keep)]
        out.append(frechet_from_moments(*[m.double() for m in moments[0] + moments[1]]))
    return torch.cat(out).numpy()


def _weighted_moments(x, weights):
    """Weighted mean ``[B, d]`` and unbiased covariance ``[B, d, d]`` of rows ``x [N, d]`` under ``weights [B, N]``
    (integer draw counts: the covariance of the resample as a set of rows)."""
    n = weights.sum(1)
    mean = weights @ x / n[:, None]
    scaled = weights.sqrt()[:, :, None] * x
    second = scaled.transpose(1, 2) @ scaled / n[:, None, None]
    cov = (second - mean[:, :, None] * mean[:, None, :]) * (n / (n - 1))[:, None, None]
    return mean, cov


def frechet_from_moments(mu1, sigma1, mu2, sigma2):
    """Batched Fréchet distance (``[B]``) of Gaussians given by ``[B, d]`` means and ``[B, d, d]`` covariances; the
    same formula as :func:`recbole_gen.evaluator.functional.frechet_distance`.

    ``tr((S1^1/2 S2 S1^1/2)^1/2)`` is the sum of the square roots of the eigenvalues of ``S1 S2``, which are those
    of ``L^T S1 L`` for ``S2 = L L^T``: a Cholesky factor and eigenvalues only, about 3x faster than the symmetric
    square root. A row whose ``S2`` is singular (a resample with fewer distinct items than dimensions) takes the
    square-root path, which needs no inverse."""
    factor, info = torch.linalg.cholesky_ex(sigma2)
    middle = factor.transpose(1, 2) @ sigma1 @ factor
    singular = info > 0
    if singular.any():
        values, vectors = torch.linalg.eigh((sigma1[singular] + sigma1[singular].transpose(1, 2)) / 2)
        root = (vectors * values.clamp(min=0).sqrt().unsqueeze(1)) @ vectors.transpose(1, 2)
        middle[singular] = root @ sigma2[singular] @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.transpose(1, 2)) / 2).clamp(min=0).sqrt().sum(1)
    diff = mu1 - mu2
    trace = torch.diagonal(sigma1, dim1=1, dim2=2).sum(1) + torch.diagonal(sigma2, dim1=1, dim2=2).sum(1)
    return ((diff * diff).sum(1) + trace - 2 * trace_sqrt).clamp(min=0)

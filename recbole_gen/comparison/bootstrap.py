"""Paired bootstrap over test users: a 95% interval for every metric of every row, and which rows differ from the best.

A row's process draws ``bootstrap_samples`` resamples of its test users (users in id order, the benchmark's seed)
and keeps each metric's value on every resample (:func:`replicates`; recomputed by
:func:`recbole_gen.evaluator.intervals.resampled`, FD and ImageCoverage included). Every row draws the same
resamples, so the report compares two rows resample by resample (paired), with no retraining.

An interval is the resamples' 2.5th-97.5th percentiles shifted by the bootstrap's estimate of bias (the point value
minus the resamples' mean). For a mean over users that shift is nil; for FD and ImageCoverage it matters: a resample
holds only about 63% distinct users, which raises FD and lowers coverage on every resample. Where the resamples are
lopsided the shifted percentiles can miss the point itself (a ranker whose images show six items, two of them to a
handful of users: nearly every resample keeps all six, a few drop one, so the mean and with it the shift move while
the percentiles do not); an interval is then widened to reach its point.

Slices (:func:`slices`) split the test users by how often their true next item occurs in the training split (cold:
never; tail: rarely; head): where content should help an ID-based ranker least. Each slice's metrics are means over
its users, resampled within the slice, with the same resamples for every row (paired).
"""
import hashlib

import numpy as np

from recbole_gen.evaluator.collector import TARGET_COUNT
from recbole_gen.evaluator.intervals import MEAN, resampled


def replicates(per_user, samples, seed):
    """``{"users": digest of the user ids, "metrics": {metric: float [samples]}}`` for one row's test users."""
    users = per_user["user"]
    index = np.random.default_rng(seed).integers(0, len(users), size=(samples, len(users)))
    return {"users": hashlib.sha1(np.ascontiguousarray(users, dtype=np.int64).tobytes()).hexdigest(),
            "metrics": resampled(per_user, index)}


def slices(per_user, bounds, metrics, samples, seed):
    """``{slice: {"users": n, "values": {metric: point}, "draws": {metric: float [samples]}}}`` for ``bounds``
    ``{slice: [at least, below]}`` (training interactions of the user's target; ``below`` None = no bound) and the
    mean-over-users ``metrics`` (``hit@10``, ``targetsim``, ...). Empty without the targets' counts."""
    if TARGET_COUNT not in per_user:
        return {}
    counts = per_user[TARGET_COUNT]
    out = {}
    for number, (name, (low, high)) in enumerate(bounds.items()):
        members = (counts >= low) & (counts < (np.inf if high is None else high))
        picked = {f"{MEAN}{m}": per_user[f"{MEAN}{m}"][members] for m in metrics if f"{MEAN}{m}" in per_user}
        size = int(members.sum())
        index = np.random.default_rng([seed, number]).integers(0, max(size, 1), size=(samples, size))
        values = {key[len(MEAN):]: float(np.nanmean(v)) if size and not np.isnan(v).all() else None
                  for key, v in picked.items()}
        out[name] = {"users": size, "values": values, "draws": resampled(picked, index) if size else {}}
    return out


def interval(point, draws, level):
    """The bias-shifted percentile interval ``(low, high)`` of ``point`` from its bootstrap ``draws``."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[~np.isnan(draws)]
    if point is None or np.isnan(point) or not len(draws):
        return None
    low, high = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)]) + (point - draws.mean())
    return float(min(low, point)), float(max(high, point))


def compare(point, draws, best_point, best_draws, level):
    """The interval of ``point - best_point`` from paired draws, and whether it excludes 0 (a significant difference)."""
    difference = interval(point - best_point, np.asarray(draws) - np.asarray(best_draws), level)
    return difference, difference is not None and (difference[0] > 0 or difference[1] < 0)

"""Generation metrics as RecBole metrics: ``metrics: [Hit, NDCG, TargetSim, Novelty, FD]`` works.

They are RANKING-type metrics (so they share a run with Hit/NDCG/MRR) that need ``gen.image``: when a
run lists any, :class:`recbole_gen.evaluator.collector.ImageCollector` (``register.need("gen.image")``)
collects per-user values under the ``gen.*`` keys below; each class only aggregates (mean over users,
NaN skipped).

=================  ===============  ====  =======================================================
metric             collector key    best  meaning
=================  ===============  ====  =======================================================
TargetSim          gen.target_sim    ↑    mean cosine of the samples to the true next item
TargetSimBest      gen.target_sim_best ↑  best-of-n cosine to the true next item
HistorySim         gen.history_sim   ↑    mean cosine to the user's history items
FutureSim          gen.future_sim    ↑    mean cosine to the user's later items (valid: the test item)
Diversity          gen.diversity     ↑    mean pairwise (1 - cosine) among a user's samples
ImageCoverage      gen.nearest       ↑    share of catalogue items that are some sample's nearest item
Novelty            gen.novelty       ↑    1 - max cosine to any catalogue item (0 = a copy)
FD                 gen.fd            ↓    Fréchet distance, generated vs true next items' embeddings
RepeatRate         gen.repeat_rate   ↓    share of samples whose nearest catalogue item the user already took
PlanFidelity       gen.plan_fidelity ↑    share of a generator's samples whose nearest catalogue item is their plan
OracleUtility      gen.oracle_utility ↑   the judge's utility of the samples (datasets with a judge file)
=================  ===============  ====  =======================================================

Registration (:func:`register_metrics`) only touches RecBole's registry tables; it imports neither
FAISS nor any encoder.
"""
import math

import numpy as np
import torch
from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType

NEED = "gen.image"  # the Register flag that makes the trainer compute image metrics


class ImageMetricMissingError(RuntimeError):
    pass


def _get(dataobject, key, metric):
    if key not in dataobject:
        raise ImageMetricMissingError(
            f"metric '{metric}' needs '{key}' from recbole-gen's image collector: build the trainer with "
            "recbole_gen.quick_start.build_trainer (run_recbole does), which adds image evaluation to any trainer"
        )
    return dataobject.get(key)


class ImageMetric(AbstractMetric):
    metric_type = EvaluatorType.RANKING
    metric_need = [NEED]
    smaller = False
    key = None

    def calculate_metric(self, dataobject):
        name = type(self).__name__.lower()
        values = _get(dataobject, self.key, name).double().flatten()
        values = values[~torch.isnan(values)]
        value = float(values.mean()) if values.numel() else float("nan")
        return {name: round(value, self.decimal_place) if not math.isnan(value) else value}


def _mean_metric(name, key, smaller=False):
    """A metric whose value is the mean over users of collector key ``key`` (see the table above)."""
    return type(name, (ImageMetric,), {"key": key, "smaller": smaller, "__module__": __name__,
                                       "__doc__": f"Mean over users of ``{key}`` (NaN skipped)."})


TargetSim, TargetSimBest, HistorySim, FutureSim, Diversity, Novelty, OracleUtility = (
    _mean_metric(name, f"gen.{key}") for name, key in (
        ("TargetSim", "target_sim"), ("TargetSimBest", "target_sim_best"), ("HistorySim", "history_sim"),
        ("FutureSim", "future_sim"), ("Diversity", "diversity"), ("Novelty", "novelty"),
        ("OracleUtility", "oracle_utility")))
RepeatRate = _mean_metric("RepeatRate", "gen.repeat_rate", smaller=True)
PlanFidelity = _mean_metric("PlanFidelity", "gen.plan_fidelity")


class ImageCoverage(ImageMetric):
    key = "gen.nearest"

    def calculate_metric(self, dataobject):
        from recbole_gen.evaluator.functional import coverage

        num_items = int(_get(dataobject, "gen.num_catalogue_items", "imagecoverage").flatten()[0])
        value = coverage(_get(dataobject, "gen.nearest", "imagecoverage"), num_items)
        return {"imagecoverage": round(value, self.decimal_place)}


class FD(ImageMetric):
    key = "gen.fd_stats"
    smaller = True

    def calculate_metric(self, dataobject):
        from recbole_gen.evaluator.functional import FrechetStats

        value = FrechetStats.distance(_get(dataobject, "gen.fd_stats", "fd"))
        return {"fd": round(value, self.decimal_place) if not np.isnan(value) else value}


IMAGE_METRICS = [TargetSim, TargetSimBest, HistorySim, FutureSim, Diversity, ImageCoverage, Novelty, RepeatRate,
                 PlanFidelity, FD, OracleUtility]
IMAGE_METRIC_NAMES = [cls.__name__.lower() for cls in IMAGE_METRICS]


def register_metrics():
    """Add the image metrics to RecBole's registry tables (in place: RecBole's Config, Register and
    Evaluator hold references to them). Idempotent; call before building a Config."""
    from recbole.evaluator import register

    for cls in IMAGE_METRICS:
        name = cls.__name__.lower()
        register.metrics_dict[name] = cls
        register.metric_information[name] = cls.metric_need
        register.metric_types[name] = cls.metric_type
        if cls.smaller and name not in register.smaller_metrics:
            register.smaller_metrics.append(name)


def wants_image_metrics(config):
    """True when ``config['metrics']`` lists any image metric."""
    metrics = config["metrics"] or []
    if isinstance(metrics, str):
        metrics = [metrics]
    return any(str(m).lower() in IMAGE_METRIC_NAMES for m in metrics)

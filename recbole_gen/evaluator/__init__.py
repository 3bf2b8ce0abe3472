"""Evaluation: generation metrics registered into RecBole, the image collector, and image evaluation for any
trainer (generators ranked by their images, rankers judged by their top items' images).

Importing this package registers the image metrics (TargetSim, Novelty, FD, ...) into RecBole's metric
registry; it is cheap (no FAISS / open_clip import). The heavier parts load on first use:

    from recbole_gen.evaluator import catalogue_scores, image_metrics, with_image_evaluation
"""
import importlib

from recbole_gen.evaluator.metrics import IMAGE_METRIC_NAMES, register_metrics, wants_image_metrics

register_metrics()

_LAZY = {
    "catalogue_scores": "scoring", "catalogue_topk": "scoring", "rank_fusion": "scoring",
    "image_metrics": "functional", "frechet_distance": "functional",
    "KNNOracleJudge": "oracle", "build_oracle_judge": "oracle",
    "ImageCollector": "collector", "with_image_evaluation": "image_evaluation",
}

__all__ = ["IMAGE_METRIC_NAMES", "register_metrics", "wants_image_metrics", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"recbole_gen.evaluator.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'recbole_gen.evaluator' has no attribute '{name}'")

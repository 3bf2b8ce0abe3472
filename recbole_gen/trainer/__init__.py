"""Trainers for recbole-gen's models, found as ``<Model>Trainer`` by ``recbole_gen.utils.get_trainer``.

Imported on first use, so that running a RecBole model (SASRec...) never imports transformers."""
import importlib

_TRAINERS = {"GenLMMTrainer": "recbole_gen.trainer.genlmm", "GenLMMRLTrainer": "recbole_gen.trainer.rl",
             "GenLMMRAFTTrainer": "recbole_gen.trainer.rl", "GenLMMDPOTrainer": "recbole_gen.trainer.rl",
             "GenDiffTrainer": "recbole_gen.trainer.gendiff"}

__all__ = sorted(_TRAINERS)


def __getattr__(name):
    if name in _TRAINERS:
        return getattr(importlib.import_module(_TRAINERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

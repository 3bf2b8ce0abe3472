"""Trainers for recbole-gen's models, found as ``<Model>Trainer`` by ``recbole_gen.utils.get_trainer``."""
from recbole_gen.trainer.genlmm import GenLMMTrainer

__all__ = ["GenLMMTrainer"]

"""Trainers for recbole-gen's models, found as ``<Model>Trainer`` by ``recbole_gen.utils.get_trainer``."""
from recbole_gen.trainer.genlmm import GenLMMTrainer
from recbole_gen.trainer.rl import GenLMMRLTrainer

__all__ = ["GenLMMTrainer", "GenLMMRLTrainer"]

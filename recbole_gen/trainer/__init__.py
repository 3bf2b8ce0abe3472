"""Trainers for recbole-gen's models, found as ``<Model>Trainer`` by ``recbole_gen.utils.get_trainer``."""

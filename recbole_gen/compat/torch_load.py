"""torch >= 2.6 loads with ``weights_only=True`` by default and then refuses RecBole's own
checkpoints, which pickle the ``Config`` next to the weights.

Affected: ``recbole/trainer/trainer.py`` ``Trainer.resume_checkpoint`` (line 323) and
``Trainer.evaluate(load_best_model=True)`` (line 583). The patch gives that module a ``torch``
whose ``load`` defaults to ``weights_only=False``; everything else is the real torch. Only
RecBole's trainer sees it: checkpoints it loads are the ones it wrote itself.
``recbole_gen.quick_start.load_data_and_model`` uses :func:`load_checkpoint` the same way.
"""
import types

import torch


def load_checkpoint(path, map_location=None):
    """Load a checkpoint written by a RecBole/recbole-gen trainer (a trusted local file)."""
    return torch.load(path, map_location=map_location, weights_only=False)


class _TorchWithTrustedLoad(types.ModuleType):
    """``torch`` as seen from RecBole's trainer module: the real one, except ``load``."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return torch.load(f, *args, **kwargs)


def patch_torch_load():
    import recbole.trainer.trainer as recbole_trainer

    if not isinstance(recbole_trainer.torch, _TorchWithTrustedLoad):
        recbole_trainer.torch = _TorchWithTrustedLoad()

"""torch >= 2.6 loads with ``weights_only=True`` by default and then refuses RecBole's own checkpoints, which
pickle the ``Config`` next to the weights.

Affected: ``recbole/trainer/trainer.py`` ``Trainer._save_checkpoint`` (line 296, writes the pickled Config),
``Trainer.resume_checkpoint`` (line 323) and ``Trainer.evaluate(load_best_model=True)`` (line 583), which read
it back. Loading with ``weights_only=False`` would restore them, and run any code a shared checkpoint carries;
instead the patch makes RecBole's trainer write its config as plain data (atomically) and read checkpoints with
:func:`recbole_gen.checkpoint.load_checkpoint` (``weights_only=True``). What RecBole reads back from
``checkpoint["config"]`` (the model name) works on the plain dict.
"""
import types

import torch


def _save_checkpoint(self, epoch, verbose=True, **kwargs):
    """``Trainer._save_checkpoint`` with the config as plain data, written atomically (by rank 0 alone, as RecBole's)."""
    from recbole.utils import set_color

    from recbole_gen.checkpoint import save_checkpoint
    from recbole_gen.config import plain_config

    if not self.config["single_spec"] and self.config["local_rank"] != 0:
        return
    saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
    state = {
        "config": plain_config(self.config), "epoch": epoch, "cur_step": self.cur_step,
        "best_valid_score": float(self.best_valid_score), "state_dict": self.model.state_dict(),
        "other_parameter": self.model.other_parameter(), "optimizer": self.optimizer.state_dict(),
    }
    save_checkpoint(saved_model_file, state)
    if verbose:
        self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")


class _TorchWithSafeLoad(types.ModuleType):
    """``torch`` as seen from RecBole's trainer module: the real one, except ``load``."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, map_location=None, **kwargs):
        from recbole_gen.checkpoint import load_checkpoint

        return load_checkpoint(f, map_location=map_location or "cpu")


def patch_torch_load():
    import recbole.trainer.trainer as recbole_trainer

    if not isinstance(recbole_trainer.torch, _TorchWithSafeLoad):
        recbole_trainer.torch = _TorchWithSafeLoad()
        recbole_trainer.Trainer._save_checkpoint = _save_checkpoint

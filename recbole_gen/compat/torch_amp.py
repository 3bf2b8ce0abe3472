"""RecBole 1.2.1's trainer imports ``torch.cuda.amp`` (``recbole/trainer/trainer.py`` line 30) and builds
``amp.GradScaler(enabled=...)`` at the start of every epoch (``Trainer._train_epoch`` line 235,
``NCLTrainer._train_epoch`` line 1440) and ``amp.autocast(enabled=...)`` for every NCL batch (line 1453). torch 2.4
deprecated both (a FutureWarning every epoch; an error once torch removes them) for ``torch.amp.GradScaler("cuda",
...)`` and ``torch.autocast("cuda", ...)``, which do the same; the trainer module's ``amp`` is pointed at those.
"""
import functools
import types

import torch


def patch_torch_amp():
    import recbole.trainer.trainer as recbole_trainer

    recbole_trainer.amp = types.SimpleNamespace(GradScaler=functools.partial(torch.amp.GradScaler, "cuda"),
                                                autocast=functools.partial(torch.autocast, "cuda"))

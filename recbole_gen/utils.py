"""Model and trainer lookup that tries recbole-gen first and falls back to RecBole.

Plugin models are listed in :data:`PLUGIN_MODELS` (imported lazily, so running SASRec never
imports transformers) or added at run time with :func:`register_model`, which may also name a
``properties`` folder holding the model's ``model/<Model>.yaml``.
"""
import contextlib
import difflib
import importlib
import logging
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

from recbole.utils import get_trainer as recbole_get_trainer
from recbole.utils import init_seed as recbole_init_seed
from recbole.utils.logger import RemoveColorFilter, log_colors_config
from recbole.utils.utils import get_local_time

import recbole

from recbole_gen.compat import torch_scatter
from recbole_gen.files import storage_errors

#: cuBLAS's deterministic mode needs a fixed workspace (read when CUDA starts; set it yourself to choose another)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def init_seed(seed, reproducibility):
    """RecBole's ``init_seed``, and with ``reproducibility`` torch's deterministic algorithms too: on the CPU the
    backward of indexing a tensor with a tensor of indices (``index_put_`` with accumulation) otherwise adds in the
    order its threads finish, so two runs of the same command drifted apart (GenLMM-SFT's test Hit@10 0.106 to 0.114
    over five runs of the main job; docs/reliability.md). ``warn_only``: an operation without a deterministic
    version warns instead of stopping the run."""
    recbole_init_seed(seed, reproducibility)
    torch.use_deterministic_algorithms(bool(reproducibility), warn_only=True)


PLUGIN_MODELS = {
    "GenLMM": "recbole_gen.model.genlmm",
    "ImageKNN": "recbole_gen.model.image_knn",
    "LastItem": "recbole_gen.model.last_item",
    "CategoryPop": "recbole_gen.model.category_pop",
    "CategoryTaste": "recbole_gen.model.category_taste",
    "GenDiff": "recbole_gen.model.gendiff",
    "TokenizerReconstruction": "recbole_gen.model.reconstruction",
}
_registered = {}
_extra_properties = []


#: packages some of RecBole's models import and RecBole does not install: the models, and how to get the package
OPTIONAL_PACKAGES = {
    "lightgbm": ("LightGBM and XGBoost", "pip install 'recbole-gen[exlib]'"),  # RecBole's exlib package imports both
    "xgboost": ("LightGBM and XGBoost", "pip install 'recbole-gen[exlib]'"),
    "dgl": ("KGAT", "install a dgl build that matches your torch (https://www.dgl.ai/pages/start.html; PyPI's "
                    "dgl 2.1 predates torch 2.4)"),
    "kmeans_pytorch": ("LDiffRec", "pip install kmeans-pytorch"),
}


class UnknownModelError(ValueError):
    """A model name that neither recbole-gen nor RecBole knows."""


def missing_dependency(error):
    """What to tell a user whose run stopped on ``error`` (a ``ModuleNotFoundError``) when it is an optional package
    one of RecBole's models needs (:data:`OPTIONAL_PACKAGES`); None for any other missing module."""
    name = (error.name or "").split(".")[0]
    if name not in OPTIONAL_PACKAGES:
        return None
    models, install = OPTIONAL_PACKAGES[name]
    return f"the package '{name}' is not installed, and RecBole's {models} import it: {install}"


def properties_dir():
    """This package's ``properties/``: inside the installed package, or the repository root."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "properties", here.parent / "properties"):
        if (candidate / "overall.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"recbole-gen's properties/ folder is missing next to {here}; reinstall the package")


def properties_dirs():
    """Every properties layer, lowest priority first: this package's, then registered ones."""
    return [properties_dir(), *_extra_properties]


def register_model(model_class, properties=None):
    """Make ``model_class`` findable by name; ``properties`` is an optional folder of yaml layers."""
    _registered[model_class.__name__] = model_class
    if properties is not None and Path(properties) not in _extra_properties:
        _extra_properties.append(Path(properties))
    return model_class


RECBOLE_MODEL_PACKAGES = ("general_recommender", "context_aware_recommender", "sequential_recommender",
                          "knowledge_aware_recommender", "exlib_recommender")


def recbole_model_names():
    """RecBole's own model class names, as its model packages export them (read from their ``__init__.py``
    without importing them: the exlib package needs lightgbm and xgboost)."""
    folder = Path(recbole.__file__).resolve().parent / "model"
    names = set()
    for package in RECBOLE_MODEL_PACKAGES:
        names |= set(re.findall(r"^from \S+ import (\w+)", (folder / package / "__init__.py").read_text(), re.M))
    return sorted(names)


def known_model_names():
    return sorted({*PLUGIN_MODELS, *_registered, *recbole_model_names()})


def get_model(model_name):
    """The model class for ``model_name``: registered, then recbole-gen's, then RecBole's."""
    if model_name in _registered:
        return _registered[model_name]
    if model_name in PLUGIN_MODELS:
        return getattr(importlib.import_module(PLUGIN_MODELS[model_name]), model_name)
    if model_name in recbole_model_names():
        from recbole.utils import get_model as recbole_get_model

        if model_name in torch_scatter.MODELS:
            torch_scatter.provide()
        return recbole_get_model(model_name)
    close = difflib.get_close_matches(model_name, known_model_names(), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown model '{model_name}'.{hint} Model names are case-sensitive; "
        f"run `run_recbole --list-models` to see all {len(known_model_names())}."
    )


def get_trainer(model_type, model_name, stage=None):
    """``recbole_gen.trainer.<Model>Trainer`` if it exists, else RecBole's choice.

    A training ``stage`` other than the default (e.g. ``rl``) selects ``<Model><STAGE>Trainer``."""
    trainer_module = importlib.import_module("recbole_gen.trainer")
    if stage and str(stage).lower() != "sft":
        trainer = getattr(trainer_module, f"{model_name}{str(stage).upper()}Trainer", None)
        if trainer is None:
            raise UnknownModelError(f"model '{model_name}' has no training stage '{stage}'")
        return trainer
    trainer = getattr(trainer_module, model_name + "Trainer", None)
    if trainer is not None:
        return trainer
    return recbole_get_trainer(model_type, model_name)


_MIXED = {}


def with_mixin(base, mixin):
    """``base`` with ``mixin`` in front of it (``FooMixin`` + ``Trainer`` -> ``TrainerWithFoo``): a cached subclass,
    or ``base`` itself when it has the mixin already."""
    if issubclass(base, mixin):
        return base
    if (base, mixin) not in _MIXED:
        what = mixin.__name__.removesuffix("Mixin")
        _MIXED[base, mixin] = type(f"{base.__name__}With{what}", (mixin, base),
                                   {"__module__": mixin.__module__, "__doc__": f"{base.__name__} + {mixin.__name__}."})
    return _MIXED[base, mixin]


class LogFile(logging.FileHandler):
    """The run's log file. A record it cannot write (a full disk) stops the run with a :class:`StorageError`
    naming the folder, instead of logging's "--- Logging error ---" traceback per record while the run goes on
    and its log stays empty."""

    def handleError(self, record):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            with storage_errors(Path(self.baseFilename).parent):
                raise error
        super().handleError(record)


def init_logger(config):
    """RecBole's logger (same format and colours), with the folder taken from ``config['log_dir']``.

    RecBole hard-codes ``./log/`` and cannot re-initialise within one process; this one can.
    """
    folder = os.path.join(config["log_dir"], config["model"])
    level = getattr(logging, str(config["state"] or "INFO").upper(), logging.INFO)
    filename = f"{config['model']}-{config['dataset']}-{get_local_time()}.log"
    with storage_errors(folder):
        os.makedirs(folder, exist_ok=True)  # ranks start together: RecBole's ensure_dir races
        file_handler = LogFile(os.path.join(folder, filename))
    file_handler.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s", "%a %d %b %Y %H:%M:%S"))
    file_handler.addFilter(RemoveColorFilter())
    import colorlog

    stream_handler = logging.StreamHandler()
    stream_handler.setFormatter(
        colorlog.ColoredFormatter("%(log_color)s%(asctime)-15s %(levelname)s  %(message)s", "%d %b %H:%M", log_colors=log_colors_config)
    )
    logging.basicConfig(level=level, handlers=[stream_handler, file_handler], force=True)
    return file_handler.baseFilename


@contextlib.contextmanager
def training_randomness_kept():
    """Restore the random states (torch's on the CPU and the current GPU, numpy's, Python's) on exit: what runs
    inside (an evaluation, a FLOPs count) cannot change how a model trains next. RecBole applies a model's batch
    transform to evaluation batches too (BERT4Rec's masking draws from Python's stream), and counts FLOPs with it."""
    states = random.getstate(), np.random.get_state()
    gpu = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=gpu):
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])

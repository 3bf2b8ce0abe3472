"""RecBole's ``Config`` with recbole-gen's ``properties/`` layered over RecBole's own.

Order, lowest priority first: RecBole's overall/model/dataset/quick-start yaml, then each
recbole-gen properties layer's ``overall.yaml``, ``quick_start_config/<model type>.yaml``,
``dataset/<dataset>.yaml`` and ``model/<Model>.yaml``, then the dataset folder's own ``<dataset>.yaml``
(``<data_path>/<dataset>/<dataset>.yaml``, as ``import-dataset`` writes it: it describes the data and may not say
where files go or lift a safeguard, :func:`check_dataset_yaml`), then config files, ``config_dict`` and
command-line overrides as in RecBole. Every default lives in those yaml files: code reads
``config[key]`` (a plain dict goes through the same layering: ``Config(model, dataset, config_dict=...)``).

Unlike RecBole's, this Config does not read ``sys.argv`` behind the caller's back (the ``run_recbole``
command parses ``--key=value`` overrides with :func:`parse_value` and passes them in ``config_dict``),
warns about keys no properties layer knows, and converts to and from plain data (:func:`plain_config`,
:meth:`Config.from_plain`), which is how checkpoints store it.

:class:`Settings` is the base of the typed, grouped views of a config (``GenLMMSettings``, ``RLSettings``...):
one dataclass per concern, built in one place, type- and range-checked before any work starts.
"""
import dataclasses
import difflib
import enum
import logging
import math
import os
import re
import typing
from pathlib import Path

import recbole
import torch
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.config.configurator import dataset_arguments, evaluation_arguments, general_arguments, training_arguments

from recbole_gen.utils import get_model, properties_dirs

QUICK_START_BY_TYPE = {"SEQUENTIAL": "sequential.yaml"}
RECBOLE_PROPERTIES = Path(recbole.__file__).resolve().parent / "properties"
#: keys that ``Config`` computes itself; a config rebuilt from plain data recomputes them
DERIVED_KEYS = ("model", "dataset", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec",
                "local_rank", "valid_neg_sample_args", "test_neg_sample_args", "valid_metric_bigger")
#: where a run reads and writes files: a config rebuilt from a checkpoint takes them from the user, not the checkpoint
PATH_KEYS = ("data_path", "log_dir", "cache_dir", "checkpoint_dir")


#: keys a dataset folder's yaml may not set: where files are read or written, and the safeguards
UNSAFE_IN_DATASET_YAML = re.compile(r"(_path|_dir|_file|_files)$|^(init_from|allow_external_images)$")


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message names the key."""


class Config(RecBoleConfig):
    def _load_cmd_line(self):
        return {}

    def _load_config_files(self, file_list):
        values = {}
        for file in file_list or []:
            values.update(self._read_yaml(file))
        return values

    def _update_internal_config_dict(self, file):
        values = self._read_yaml(file)
        self.internal_config_dict.update(values)
        return values

    def _read_yaml(self, file):
        """The mapping in yaml ``file`` (RecBole's loader); a file that is not YAML, or not a mapping, is a
        :class:`ConfigError` naming it, its line and column (RecBole's message names only ``<unicode string>``)."""
        try:
            with open(file, encoding="utf-8") as f:
                values = yaml.load(f.read(), Loader=self.yaml_loader)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{file}{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
        if not isinstance(values, (dict, type(None))):
            raise ConfigError(f"{file}: a config file holds 'key: value' lines, not a {type(values).__name__}")
        return values or {}

    def _get_final_config_dict(self):
        """RecBole 1.2.1's defaults contradict themselves for CE-loss models (SASRec, GRU4Rec...):
        overall.yaml samples training negatives, which ``_set_default_parameters`` then refuses.
        Unless the user asked for negatives, a CE model gets none, as RecBole's docs intend."""
        final = super()._get_final_config_dict()
        if final.get("loss_type") == "CE" and "train_neg_sample_args" not in self.external_config_dict:
            final["train_neg_sample_args"] = None
        self._warn_unknown_keys()
        return final

    def _set_default_parameters(self):
        """RecBole's derived settings. RecBole 1.2.1 refuses ``repeatable: False`` for sequential models, since its
        sequential evaluation cannot mask a user's past items; recbole-gen's can (:mod:`recbole_gen.data.dataloader`),
        so the value stands. What RecBole refuses there (``topk: [0]``...) is a :class:`ConfigError`."""
        repeatable = self.final_config_dict["repeatable"]
        self.final_config_dict["repeatable"] = True
        try:
            super()._set_default_parameters()
        except (ValueError, TypeError) as error:
            raise ConfigError(str(error)) from None
        self.final_config_dict["repeatable"] = repeatable

    def _get_model_and_dataset(self, model, dataset):
        if isinstance(model, str):
            model = get_model(model)
        elif model is None and isinstance(self.external_config_dict.get("model"), str):
            model = get_model(self.external_config_dict["model"])
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        lower = RECBOLE_PROPERTIES / "model" / f"{model.lower()}.yaml"
        if not (RECBOLE_PROPERTIES / "model" / f"{model}.yaml").is_file() and lower.is_file():
            # RecBole names two model yaml files in lower case (lightgbm.yaml, xgboost.yaml) and looks them up by the
            # model's name: on a case-sensitive disk LightGBM and XGBoost ran without their booster parameters
            self._update_internal_config_dict(str(lower))
        quick_start = QUICK_START_BY_TYPE.get(model_class.type.name)
        for folder in properties_dirs():
            layers = [
                folder / "overall.yaml",
                folder / "quick_start_config" / quick_start if quick_start else None,
                folder / "dataset" / f"{dataset}.yaml",
                folder / "model" / f"{model}.yaml",
            ]
            for layer in layers:
                if layer is not None and layer.is_file():
                    added = self._update_internal_config_dict(str(layer))
                    if layer.parent.name == "dataset":
                        self._describe_dataset(added)
        data_path = self.external_config_dict.get("data_path") or self.internal_config_dict["data_path"]
        own = Path(data_path) / dataset / f"{dataset}.yaml"
        if own.is_file():
            values = check_dataset_yaml(own, self._read_yaml(own))
            self.internal_config_dict.update(values)
            self._describe_dataset(values)

    def _describe_dataset(self, keys):
        self.parameters["Dataset"] += [k for k in keys if k not in self.parameters["Dataset"]]

    def _init_device(self):
        """RecBole's device set-up; a multi-process run gets the backend that fits the machine: RecBole's own (nccl)
        on GPUs, gloo on the CPU (RecBole 1.2.1 hard-codes nccl and asserts a GPU id per process, so ``--nproc=2``
        could not run there). Under torchrun (``LOCAL_RANK`` and ``WORLD_SIZE`` in the environment) the ranks and
        the rendezvous come from the environment instead of ``local_rank``/``ip``/``port``."""
        final = self.final_config_dict
        torchrun = "local_rank" not in final and "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
        if torchrun:
            local = int(os.environ["LOCAL_RANK"])
            final.update(local_rank=local, world_size=int(os.environ["WORLD_SIZE"]),
                         offset=int(os.environ.get("RANK", local)) - local,
                         nproc=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
        on_gpu = torch.cuda.is_available() and str(final["gpu_id"]).strip("(), ") != ""
        if "local_rank" not in final or (on_gpu and not torchrun):
            return super()._init_device()
        local_rank = final["local_rank"]
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(
                backend="nccl" if on_gpu else "gloo", rank=local_rank + final["offset"], world_size=final["world_size"],
                init_method="env://" if torchrun else f"tcp://{final['ip']}:{final['port']}")
        if on_gpu:
            torch.cuda.set_device(local_rank)
        elif "OMP_NUM_THREADS" not in os.environ:  # the machine's cores shared by its ranks, not each rank taking all
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(final["nproc"])))
        final.update(device=torch.device("cuda", local_rank) if on_gpu else torch.device("cpu"), single_spec=False)
        if local_rank != 0:
            final.update(state="error", show_progress=False, verbose=False)

    def _warn_unknown_keys(self):
        known = known_keys() | set(self.internal_config_dict)
        for key in sorted(set(self.external_config_dict) - known):
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            logging.getLogger().warning(f"config key '{key}' is not a setting of RecBole or recbole-gen{hint}")

    @classmethod
    def from_plain(cls, plain, config_dict=None, checkpoint_paths=False):
        """The Config a checkpoint stored with :func:`plain_config`: the same values, derived keys recomputed, and
        :data:`PATH_KEYS` from ``config_dict`` and the defaults (the stored ones only with ``checkpoint_paths``);
        ``config_dict`` overrides the rest too."""
        values = {k: v for k, v in plain.items() if k not in DERIVED_KEYS and (checkpoint_paths or k not in PATH_KEYS)}
        if checkpoint_paths:
            values["data_path"] = os.path.dirname(os.path.normpath(plain["data_path"]))
        if (values.get("train_neg_sample_args") or {}).get("distribution") == "none":
            values["train_neg_sample_args"] = None
        return cls(model=plain["model"], dataset=plain["dataset"], config_dict={**values, **(config_dict or {})})


def check_dataset_yaml(path, values):
    """``values`` of a dataset folder's own yaml ``path``, refused by name when they say where files are read or
    written (a key ending in ``_path``, ``_dir``, ``_file``; ``image_dir`` may name a folder inside it) or lift a
    safeguard (``allow_external_images``, ``init_from``): a folder received from someone else cannot do that."""
    for key, value in values.items():
        inside = (key == "image_dir" and isinstance(value, str) and not Path(value).is_absolute()
                  and ".." not in Path(value).parts)
        if UNSAFE_IN_DATASET_YAML.search(key) and not inside:
            raise ConfigError(f"{path} sets '{key}': a dataset folder's yaml describes its data and may not say where "
                              f"files are read or written or lift a safeguard; set it in your own config file or on "
                              f"the command line")
    return values


def plain_config(config):
    """``config``'s final values as plain data (enums by name, devices as text): what a checkpoint stores,
    readable without unpickling any class."""
    def plain(value):
        if isinstance(value, enum.Enum):
            return value.name
        if isinstance(value, torch.device):
            return str(value)
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return str(value)

    return {key: plain(value) for key, value in config.final_config_dict.items()}


_known = None


def known_keys():
    """Every key some properties layer (RecBole's or recbole-gen's, any model) or RecBole's argument lists define."""
    global _known
    if _known is None:
        folders = [RECBOLE_PROPERTIES, *properties_dirs()]
        keys = set(general_arguments + training_arguments + evaluation_arguments + dataset_arguments)
        keys |= {"model", "dataset", "config_files", "nproc", "world_size", "ip", "port", "offset", "local_rank"}
        for folder in folders:
            for path in folder.rglob("*.yaml"):
                keys |= set(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        _known = keys
    return _known


def parse_value(text):
    """A command-line value as RecBole means it: numbers, ``True``/``False``, lists and dicts, ``None``/``~``;
    anything else stays text (``abc``, ``ml-100k``)."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text in ("None", "~", "null"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (list, dict)) else text


# ----------------------------------------------------------------------------------------- typed settings
class Settings:
    """Base of a frozen dataclass of related config keys (one field per key, documented in the yaml that
    sets its default). :meth:`from_config` reads each field with ``config[key]``, converts it to the
    annotated type and runs :meth:`check`, so a bad value stops the run before any work, naming the key."""

    @classmethod
    def from_config(cls, config):
        hints = typing.get_type_hints(cls)
        values = {}
        for field in dataclasses.fields(cls):
            values[field.name] = _convert(field.name, _lookup(config, field.name), hints[field.name])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self):
        """Range checks; raise :class:`ConfigError` naming the key."""

    def require(self, ok, key, what):
        if not ok:
            raise ConfigError(f"{key} must be {what}, got {getattr(self, key)!r}")

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TrainingSettings(Settings):
    """The keys RecBole's trainer and quick start read for every model (RecBole's properties/overall.yaml): RecBole
    accepts ``learning_rate: inf`` and ``epochs: -3``, and stops on ``nan``, a zero batch size, a text seed or a
    ``valid_metric`` it does not compute only once data is read or a model trained."""

    seed: int
    epochs: int
    train_batch_size: int
    eval_batch_size: int
    learning_rate: float
    weight_decay: float
    metrics: list
    topk: typing.Optional[list]
    valid_metric: str

    def check(self):
        name, _, k = self.valid_metric.partition("@")
        cutoffs = [str(k) for k in self.topk or []]
        at = f", at topk {', '.join(cutoffs)}" if cutoffs else ""
        self.require(name.lower() in [str(m).lower() for m in self.metrics] and (not k or k in cutoffs),
                     "valid_metric", f"one of the metrics computed ({', '.join(map(str, self.metrics))}{at})")
        self.require(self.epochs >= 0, "epochs", ">= 0 (0: evaluate the model as it starts, e.g. from init_from)")
        for key in ("train_batch_size", "eval_batch_size"):
            self.require(getattr(self, key) >= 1, key, ">= 1")
        self.require(math.isfinite(self.learning_rate) and self.learning_rate > 0, "learning_rate",
                     "a finite number > 0")
        self.require(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
                     "a finite number >= 0")


def _lookup(config, key):
    if key not in config:
        raise ConfigError(f"config has no '{key}': build it with recbole_gen.config.Config, which layers "
                          f"properties/*.yaml (where every default lives) under your values")
    return config[key]


def _convert(key, value, annotation):
    optional = typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must be set (it has no default of ~)")
    kind = next(a for a in typing.get_args(annotation) if a is not type(None)) if optional else annotation
    origin = typing.get_origin(kind) or kind
    try:
        if origin is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise TypeError
            return value
        if origin is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if origin is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if origin is str:
            return str(value)
        if origin is list:
            return list(value) if isinstance(value, (list, tuple)) else [value]
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {getattr(kind, '__name__', kind)}, got {value!r}") from None

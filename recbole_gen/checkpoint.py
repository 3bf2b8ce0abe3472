"""Checkpoints that cannot execute code: config as plain data, weights as tensors.

RecBole's trainers pickle their ``Config`` into every checkpoint, and loading such a file with
``torch.load(weights_only=False)`` runs whatever code the pickle names: a checkpoint shared between students
or machines could run anything. Here every trainer (RecBole's through :mod:`recbole_gen.compat`, recbole-gen's
own) writes ``config`` as plain data (:func:`recbole_gen.config.plain_config`), and :func:`load_checkpoint`
reads with ``weights_only=True``: tensors, numbers, strings, lists and dicts only. A file that needs more is
refused with a one-line error; ``trust=True`` (``--trust-checkpoint``) opts in for a file you trust (e.g. one
written by stock RecBole).

:func:`export_checkpoint` writes a Hugging Face-style folder (``config.json``, ``model.safetensors``,
``other_parameter.json`` / ``other_parameter.safetensors``) that :func:`load_checkpoint`, ``load_data_and_model``
and ``recbole-gen generate`` read like a ``.pth`` file.
"""
import json
import pickle
import zipfile
from pathlib import Path

import torch

from recbole_gen.files import array_bytes, atomic_write, atomic_write_bytes

EXPORT_FORMAT = "recbole-gen-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, not a checkpoint, or that would need arbitrary unpickling."""


TAG = "__recbole_gen__"  # marks a value of ``other_parameter`` stored as tensors (see :func:`plain_other_parameter`)


def save_checkpoint(path, state):
    """Write ``state`` (its ``config`` already plain data) atomically: an interrupted save leaves the old file."""
    if state.get("other_parameter"):
        state = {**state, "other_parameter": plain_other_parameter(state["other_parameter"])}
    # torch's default protocol, which the weights-only unpickler reads
    atomic_write(path, lambda f: torch.save(state, f), size=array_bytes(state))
    return path


def plain_other_parameter(other):
    """A model's ``other_parameter()`` in the types a weights-only load accepts. RecBole's models keep numpy arrays
    (EASE), scipy sparse matrices (ItemKNN, EASE) and submodules (SASRecF's feature embedding) there: arrays and
    matrices become tagged tensors; a submodule is left out, since its weights are in ``state_dict`` already."""
    import numpy as np
    import scipy.sparse as sp

    plain = {}
    for key, value in other.items():
        if isinstance(value, torch.nn.Module):
            continue
        if isinstance(value, np.ndarray):
            value = {TAG: "numpy", "value": torch.from_numpy(np.ascontiguousarray(value))}
        elif sp.issparse(value):
            coo = value.tocoo()
            value = {TAG: "scipy", "format": value.format, "shape": list(coo.shape), "row": torch.from_numpy(coo.row),
                     "col": torch.from_numpy(coo.col), "data": torch.from_numpy(coo.data)}
        elif isinstance(value, dict):
            value = plain_other_parameter(value)
        plain[key] = value
    return plain


def _restore_other_parameter(other):
    """The inverse of :func:`plain_other_parameter` (submodules excepted: ``state_dict`` restores them)."""
    import scipy.sparse as sp

    restored = {}
    for key, value in other.items():
        if isinstance(value, dict) and value.get(TAG) == "numpy":
            value = value["value"].numpy()
        elif isinstance(value, dict) and value.get(TAG) == "scipy":
            coo = sp.coo_matrix((value["data"].numpy(), (value["row"].numpy(), value["col"].numpy())),
                                shape=tuple(value["shape"]))
            value = coo.asformat(value["format"])
        elif isinstance(value, dict):
            value = _restore_other_parameter(value)
        restored[key] = value
    return restored


def load_checkpoint(path, map_location="cpu", trust=False):
    """A checkpoint dict (``config``, ``state_dict``, ``other_parameter``, ...) from a ``.pth`` file or an exported
    folder, without executing anything unless ``trust``."""
    path = Path(path)
    if path.is_dir():
        return _load_exported(path, map_location)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():  # not even a pickle torch could read
            raise CheckpointError(f"'{path}' is not a checkpoint ({_first_line(error)})") from None
        if not trust:
            raise CheckpointError(
                f"checkpoint '{path}' holds pickled objects, not just tensors and plain data (e.g. it was written by "
                f"stock RecBole, which pickles its Config); loading it could run code. If you trust the file, pass "
                f"--trust-checkpoint (Python: trust=True), or re-save it with recbole-gen ({_first_line(error)})"
            ) from None
        checkpoint = _load_trusted(path, map_location)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"'{path}' is not a complete checkpoint ({_first_line(error)}); it may be truncated or "
                              f"not a checkpoint at all: retrain or copy it again") from None
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise CheckpointError(f"'{path}' is not a RecBole checkpoint (a dict with 'config' and 'state_dict')")
    if isinstance(checkpoint.get("other_parameter"), dict):
        checkpoint["other_parameter"] = _restore_other_parameter(checkpoint["other_parameter"])
    return checkpoint


def _load_trusted(path, map_location):
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise CheckpointError(f"'{path}' could not be loaded ({_first_line(error)})") from None


def _first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _summary(error, limit=300):
    """``error``'s message on one line, cut at ``limit`` characters (torch lists every mismatching key)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def checkpoint_config(checkpoint, path, config_dict=None, checkpoint_paths=False):
    """The run's :class:`recbole_gen.config.Config` from checkpoint ``path`` (plain data, or a trusted pickled Config):
    its values, except where files are read and written (:data:`~recbole_gen.config.PATH_KEYS`), which come from
    ``config_dict`` and the defaults unless ``checkpoint_paths`` (the checkpoint's own, for one you wrote yourself):
    a shared checkpoint does not choose where this machine writes."""
    from recbole_gen.config import Config, plain_config

    config = checkpoint["config"]
    plain = config if isinstance(config, dict) else plain_config(config) if hasattr(config, "final_config_dict") else {}
    if not all(isinstance(plain.get(key), str) for key in ("model", "dataset", "data_path")):
        raise CheckpointError(f"'{path}' holds no usable config (a mapping naming its model, dataset and data_path); "
                              f"it was not written by recbole-gen or RecBole")
    if plain["dataset"] in ("", ".", "..") or Path(plain["dataset"]).name != plain["dataset"]:
        raise CheckpointError(f"'{path}' names the dataset '{plain['dataset']}', which is not a folder name")
    try:
        return Config.from_plain(plain, config_dict, checkpoint_paths)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"'{path}': its config cannot be rebuilt ({_summary(error)})") from None


def export_checkpoint(path, out, trust=False):
    """Write checkpoint ``path`` as a folder ``out``: config.json, model.safetensors and the model's other
    parameters (JSON, tensors in other_parameter.safetensors)."""
    from safetensors.torch import save

    from recbole_gen.config import plain_config

    checkpoint = load_checkpoint(path, trust=trust)
    config = checkpoint["config"]
    out = Path(out)  # atomic_write creates it
    tensors, plain = _split_tensors(plain_other_parameter(checkpoint.get("other_parameter") or {}))
    files = {
        "config.json": json.dumps(config if isinstance(config, dict) else plain_config(config), indent=1).encode(),
        "model.safetensors": save({k: v.contiguous() for k, v in checkpoint["state_dict"].items()}),
        "other_parameter.json": json.dumps(plain, indent=1).encode(),
        "other_parameter.safetensors": save(tensors),
        "recbole_gen.json": json.dumps({"format": EXPORT_FORMAT, "source": str(path)}, indent=1).encode(),
    }
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    return out


def _split_tensors(other, prefix=""):
    tensors, plain = {}, {}
    for key, value in other.items():
        if isinstance(value, torch.Tensor):
            tensors[prefix + key] = value.contiguous()
        elif isinstance(value, dict):
            inner_tensors, inner_plain = _split_tensors(value, f"{prefix}{key}.")
            tensors.update(inner_tensors)
            plain[key] = inner_plain
        else:
            plain[key] = value
    return tensors, plain


def _load_exported(folder, map_location):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    marker = folder / "recbole_gen.json"
    if not marker.is_file() or _json_object(marker, folder).get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"'{folder}' is not an exported recbole-gen checkpoint (no {marker.name} with format "
                              f"{EXPORT_FORMAT}); export one with `recbole-gen export --model-file X --out {folder}`")
    other, config = _json_object(folder / "other_parameter.json", folder), _json_object(folder / "config.json", folder)
    try:
        for key, value in load_file(folder / "other_parameter.safetensors", device=str(map_location)).items():
            *parents, leaf = key.split(".")
            node = other
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
        return {"config": config, "state_dict": load_file(folder / "model.safetensors", device=str(map_location)),
                "other_parameter": _restore_other_parameter(other)}
    except (OSError, ValueError, SafetensorError) as error:
        raise CheckpointError(f"exported checkpoint '{folder}' is incomplete or truncated ({_first_line(error)}); "
                              f"export it again") from None


def _json_object(path, folder):
    """The JSON object in ``path``, a file of exported checkpoint ``folder``."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"exported checkpoint '{folder}': {path.name} cannot be read as JSON "
                              f"({_first_line(error)}); export it again") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"exported checkpoint '{folder}': {path.name} holds a {type(value).__name__}, not a JSON "
                              f"object; export it again")
    return value


def restore_model(checkpoint, dataset, path, config=None):
    """The model checkpoint ``path`` holds, rebuilt on ``dataset`` (its own config unless ``config`` is given); a state
    that does not fit the model is a :class:`CheckpointError` naming the file."""
    from recbole_gen.utils import get_model

    config = config or checkpoint_config(checkpoint, path)
    model = get_model(config["model"])(config, dataset)
    try:
        model.load_state_dict(checkpoint["state_dict"])
        model.load_other_parameter(checkpoint.get("other_parameter"))
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"'{path}' does not fit the {config['model']} it names on dataset '{config['dataset']}' "
                              f"({_summary(error)})") from None
    return model

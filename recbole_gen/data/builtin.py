"""Built-in datasets and the check that a dataset's atomic files exist before RecBole runs.

RecBole would otherwise ask on stdin whether to download a dataset it knows (a hang in a
script) or fail with a terse message. recbole-gen never downloads at run time: a built-in
dataset is built locally on first use; anything else must already be on disk.

A build writes beside the dataset folder and swaps it in under the folder's exclusive lock
(:func:`recbole_gen.files.staged_folder`), keeping the old folder's cache; readers hold the shared
lock while they read (:func:`recbole_gen.data.dataset.create_dataset`), so a rebuild never destroys
a dataset, and a reader never sees half of one.
"""
import logging
from pathlib import Path

from recbole_gen.files import folder_lock, staged_folder

BUILDERS = {}
CHECKS = {}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's atomic files are not on disk and no built-in builder knows the name."""


class DatasetFormatError(ValueError):
    """The dataset's files are there but give RecBole nothing to work with; the message names the file."""


def register_dataset(name, check=None):
    """Decorator: ``builder(folder: Path, config) -> None`` writes the dataset's files into ``folder``
    (``config``: a :class:`recbole_gen.config.Config`, whose dataset yaml holds the build options).
    ``check(folder, config)``, if given, returns a warning (str) when a folder already built does not
    match the config's build options."""

    def decorator(builder):
        BUILDERS[name] = builder
        if check is not None:
            CHECKS[name] = check
        return builder

    return decorator


def has_atomic_files(folder, name, benchmark_files=None):
    """Whether ``folder`` holds the dataset: ``<name>.inter/.user/.item``, or pre-split ``<name>.<part>.inter``."""
    names = [f"{name}.{suffix}" for suffix in ("inter", "user", "item")]
    names += [f"{name}.{part}.inter" for part in benchmark_files or []]
    return any((Path(folder) / file).is_file() for file in names)


def build_dataset(name, folder, config):
    """Run ``name``'s builder into a staging folder beside ``folder``, then swap it in (keeping ``.cache``)."""
    with staged_folder(folder, keep=(".cache",)) as staging:
        BUILDERS[name](staging, config)
    return Path(folder)


def ensure_dataset_files(config, build=True):
    """Make sure ``config['data_path']`` holds the dataset; build it if it is a built-in one and ``build``."""
    name, folder = config["dataset"], Path(config["data_path"])
    with folder_lock(folder):
        present = has_atomic_files(folder, name, config["benchmark_filename"])
        warning = CHECKS[name](folder, config) if present and name in CHECKS else None
    if warning:
        logging.getLogger().warning(warning)
    if present:
        return folder
    if name in BUILDERS and build:
        return build_dataset(name, folder, config)
    if name in BUILDERS:
        raise DatasetNotFoundError(
            f"Dataset '{name}' not found in {folder.resolve()}, and a built-in dataset is not built where a checkpoint "
            f"says (--checkpoint-paths): build it with `recbole-gen make-dataset {name}` and give its --data_path")
    known = ", ".join(sorted({*BUILDERS, "ml-100k"}))
    raise DatasetNotFoundError(
        f"Dataset '{name}' not found: no {name}.inter/.user/.item in {folder.resolve()}. "
        f"Built-in datasets: {known}. For another dataset, put its RecBole atomic files in "
        f"that folder (or set --data_path=<parent folder>); recbole-gen never downloads at run time."
    )

"""Built-in datasets and the check that a dataset's atomic files exist before RecBole runs.

RecBole would otherwise ask on stdin whether to download a dataset it knows (a hang in a
script) or fail with a terse message. recbole-gen never downloads at run time: a built-in
dataset is built locally on first use; anything else must already be on disk.
"""
import logging
import os
import shutil
import tempfile
from pathlib import Path

BUILDERS = {}
CHECKS = {}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's atomic files are not on disk and no built-in builder knows the name."""


def register_dataset(name, check=None):
    """Decorator: ``builder(folder: Path, config) -> None`` writes the dataset's files into ``folder``
    (``config``: a RecBole Config, a dict of overrides, or None). ``check(folder, config)``, if given,
    returns a warning (str) when a folder already built does not match the config's build options."""

    def decorator(builder):
        BUILDERS[name] = builder
        if check is not None:
            CHECKS[name] = check
        return builder

    return decorator


def has_atomic_files(folder, name):
    return any((Path(folder) / f"{name}.{suffix}").is_file() for suffix in ("inter", "user", "item"))


def build_dataset(name, folder, config=None):
    """Run ``name``'s builder into a temporary sibling folder, then move it into place atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        BUILDERS[name](staging, config)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)  # mkdtemp makes it 0700
        if folder.exists():  # an empty or partial folder left by hand: replace it
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def ensure_dataset_files(config):
    """Make sure ``config['data_path']`` holds the dataset; build it if it is a built-in one."""
    name, folder = config["dataset"], Path(config["data_path"])
    if has_atomic_files(folder, name):
        warning = CHECKS[name](folder, config) if name in CHECKS else None
        if warning:
            logging.getLogger().warning(warning)
        return folder
    if name in BUILDERS:
        return build_dataset(name, folder, config)
    known = ", ".join(sorted({*BUILDERS, "ml-100k"}))
    raise DatasetNotFoundError(
        f"Dataset '{name}' not found: no {name}.inter/.user/.item in {folder.resolve()}. "
        f"Built-in datasets: {known}. For another dataset, put its RecBole atomic files in "
        f"that folder (or set --data_path=<parent folder>); recbole-gen never downloads at run time."
    )

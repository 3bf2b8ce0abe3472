"""Writes an imported dataset folder: RecBole atomic files, the item images and manifest.json.

The folder is built beside its final place (:func:`recbole_gen.files.staged_folder`), validated
there by building the item image store over it, and swapped in only when all of that succeeded:
the output folder is complete or absent, never half-written.
"""
import json
import os
import re
import shutil
import unicodedata

import yaml
from tqdm import tqdm

from recbole_gen.data.images import ItemImageError, ItemImageStore
from recbole_gen.data.importers.common import DatasetImportError
from recbole_gen.files import atomic_write_bytes, lock_file, staged_folder


def atomic_text(text):
    """``text`` as a field of RecBole's tab-separated files. Tabs, line breaks and other control
    characters would split the row: they become spaces, and runs of spaces one. A leading ``"`` becomes
    ``“``: pandas, which RecBole reads with, would take it for a quoted field. Everything else, unicode
    included, is kept."""
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)
    text = re.sub(" +", " ", text).strip()
    return "“" + text[1:] if text.startswith('"') else text


def seconds_text(seconds):
    """Seconds as written in ``timestamp:float``: whole seconds without a fraction, else to the millisecond."""
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:.3f}".rstrip("0")


def write_dataset(out, interactions, items, images, image_root, link, manifest):
    """Create ``out``: ``<name>.inter`` (``interactions``), ``<name>.item`` (title and image path of every
    item left), ``<name>.yaml`` (how RecBole reads them), ``images/`` (``images``: token -> file under
    ``image_root``, copied or hard-linked to the same relative path) and ``manifest.json``."""
    name = out.name
    with staged_folder(out) as staging:
        _write_inter(staging / f"{name}.inter", interactions)
        relative = {token: os.path.join("images", path.relative_to(image_root)) for token, path in images.items()}
        _write_items(staging / f"{name}.item", interactions.item_tokens(), items, relative)
        _write_yaml(staging / f"{name}.yaml", interactions, len(images) == len(interactions.item_tokens()))
        _place_images(staging, images, relative, link)
        _validate(staging, name, sorted(images), out)
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        atomic_write_bytes(staging / "manifest.json", text.encode())


def _write_inter(path, interactions):
    rating = interactions.with_rating
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float" + ("\trating:float" if rating else "") + "\n")
        for user, item, seconds, value in tqdm(interactions.rows(), total=len(interactions),
                                               desc=f"writing {path.name}", unit=" rows"):
            f.write(f"{user}\t{item}\t{seconds_text(seconds)}" + (f"\t{value:g}" if rating else "") + "\n")


def _write_items(path, tokens, items, relative):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("item_id:token\ttitle:token_seq\timage:token\n")
        for token in tokens:
            item = items.get(token)
            f.write(f"{token}\t{atomic_text(item.title) if item else ''}\t{relative.get(token, '')}\n")


def _write_yaml(path, interactions, all_have_images):
    """The folder's own config, layered under the user's (recbole_gen.config): the fields to load, so that
    ``run_recbole --dataset=<name>`` trains on the folder as it is (RecBole's default ``load_col`` drops the
    timestamp), and, when some items have no image, the grey placeholder for them (image models)."""
    inter = ["user_id", "item_id", "timestamp", *(["rating"] if interactions.with_rating else [])]
    settings = {"load_col": {"inter": inter, "item": ["item_id", "title", "image"]}}
    if not all_have_images:
        settings["image_policy"] = "placeholder"
    text = (f"# How RecBole reads this folder, written by recbole-gen import-dataset; your own config files and "
            f"command line override it (docs/data.md).\n{yaml.safe_dump(settings, sort_keys=False)}")
    atomic_write_bytes(path, text.encode())


def _place_images(staging, images, relative, link):
    for token in tqdm(sorted(images), desc="linking images" if link else "copying images", unit=" files"):
        source, dest = images[token], staging / relative[token]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not link:
            shutil.copyfile(source, dest)
            continue
        try:
            os.link(source, dest)
        except OSError as error:
            raise DatasetImportError(f"cannot hard-link {source} into {staging.parent} ({error.strerror}): "
                                     f"--link needs the images and the output on one filesystem; "
                                     f"leave it out to copy them") from None


def _validate(staging, name, tokens, out):
    """Build the item image store over the staged folder for the items that have an image, so a file it
    cannot use (unreadable, truncated, not an image) stops the import with the store's own message.
    Items without an image have nothing to check: they are kept and reported instead."""
    if not tokens:
        return
    from recbole_gen.config import Config

    config = Config(model="Pop", dataset=name, config_dict={"data_path": str(staging.parent), "image_policy": "error"})
    config["data_path"] = str(staging)  # RecBole joins data_path and the name; the files are in the staged copy
    try:
        ItemImageStore.from_tokens(config, ["[PAD]", *tokens])
    except ItemImageError as error:
        message = str(error).replace(str(staging), str(out))
        raise DatasetImportError(f"nothing was written to {out}: the item image store rejects the images "
                                 f"(images/... are copies of the files in the image folder): {message}") from None
    finally:
        lock_file(staging).unlink(missing_ok=True)  # the store's lock of the staged copy, not of the dataset

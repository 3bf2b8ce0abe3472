"""The atomic files' format, checked before RecBole reads them.

RecBole reads ``.inter``, ``.user``, ``.item`` (and ``.kg``, ``.link``) with pandas and reports what it cannot use
from deep inside: ``KeyError: 'user_id'`` for a file that starts with a UTF-8 byte-order mark, a cast error for a
text timestamp, ``EmptyDataError`` for an empty file; a row without a timestamp is filled with the mean of the
others, and exact duplicate rows pass unnoticed. :func:`check_atomic_files` reads each file once, as a stream,
and stops at the first problem with a :class:`~recbole_gen.data.builtin.DatasetFormatError` naming the file, the
line and what to do; duplicate rows are a warning (a repeat at the same time may be real).
"""
import csv
import logging

import numpy as np
from recbole.utils import FeatureType

from recbole_gen.data.builtin import DatasetFormatError
from recbole_gen.data.images import dataset_folder

BOM = "\ufeff"
SUFFIXES = ("inter", "user", "item", "kg", "link")
TYPES = ", ".join(t.value for t in FeatureType)


def check_atomic_files(config):
    """Check every atomic file of ``config``'s dataset that RecBole will read (see the module docstring)."""
    folder, name = dataset_folder(config), config["dataset"]
    parts = [f"{part}.inter" for part in config["benchmark_filename"] or []]
    for suffix in (*SUFFIXES, *parts):
        path = folder / f"{name}.{suffix}"
        if path.is_file():
            _check(path, suffix.rsplit(".", 1)[-1], config)


def _loaded(config, source, fields):
    """The header fields RecBole loads from a file of kind ``source`` (RecBole's ``load_col`` / ``unload_col``)."""
    load, unload = config["load_col"], config["unload_col"] or {}
    wanted = fields if load is None or load.get(source) == "*" else [f for f in fields if f in (load.get(source) or [])]
    return [f for f in wanted if f not in (unload.get(source) or [])]


def _check(path, source, config):
    if path.stat().st_size == 0:
        raise DatasetFormatError(f"{path} is empty (0 bytes): an atomic file starts with a header line such as "
                                 f"'user_id:token<TAB>item_id:token<TAB>timestamp:float'; see docs/data.md")
    with open(path, newline="", encoding=config["encoding"]) as f:
        reader = csv.reader(f, delimiter=config["field_separator"], quoting=csv.QUOTE_NONE)
        header = next(reader, [])
        if header and header[0].startswith(BOM):
            raise DatasetFormatError(f"{path} starts with a UTF-8 byte-order mark (BOM), which RecBole would read as "
                                     f"part of the first field's name ({header[0]!r}): save the file without it, or "
                                     f"set encoding: utf-8-sig")
        fields = _fields(path, header)
        loaded = _loaded(config, source, list(fields))
        numbers = [i for i, f in enumerate(fields) if f in loaded and fields[f] == FeatureType.FLOAT.value]
        required = [i for i, f in enumerate(fields) if f in loaded and source == "inter"
                    and f in (config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["TIME_FIELD"])]
        hashes, lines = [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(fields):
                raise DatasetFormatError(f"{path}, line {line}: {len(row)} fields, the header has {len(fields)} "
                                         f"(fields are separated by {config['field_separator']!r})")
            _check_row(path, line, row, list(fields), numbers, required)
            if source == "inter":
                hashes.append(hash(tuple(row)))
                lines.append(line)
    _warn_duplicates(path, np.array(hashes, dtype=np.int64), lines)


def _fields(path, header):
    """``{field: type}`` of a header, each field written ``name:type``."""
    fields = {}
    for column in header:
        name, _, kind = column.partition(":")
        if kind not in [t.value for t in FeatureType]:
            raise DatasetFormatError(f"{path}, line 1: the field '{column}' is not written name:type with a type "
                                     f"RecBole knows ({TYPES})")
        fields[name] = kind
    return fields


def _check_row(path, line, row, names, numbers, required):
    for i in required:
        if not row[i].strip():
            raise DatasetFormatError(f"{path}, line {line}: no {names[i]}: every interaction needs one")
    for i in numbers:
        value = row[i].strip()
        try:
            float(value or 0)
        except ValueError:
            raise DatasetFormatError(f"{path}, line {line}: {names[i]} '{row[i]}' is not a number "
                                     f"(a float field; timestamps are seconds)") from None


def _warn_duplicates(path, hashes, lines):
    """Warn about rows equal to an earlier row (``hashes``: of each row, read at ``lines``)."""
    _, first = np.unique(hashes, return_index=True)
    if len(first) == len(hashes):
        return
    repeated = np.ones(len(hashes), dtype=bool)
    repeated[first] = False
    logging.getLogger().warning(f"{path}: {len(hashes) - len(first)} row(s) repeat an earlier row exactly (first at "
                                f"line {lines[np.flatnonzero(repeated)[0]]}); RecBole keeps each as an interaction")

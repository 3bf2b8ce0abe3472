"""What every importer shares on the reading side: its options, the error a user's input causes, and
raw files read as a stream.

Raw files are read once, front to back, line by line (a 10 GB category never sits in memory): the
bytes pass through a progress bar (with ETA) and a SHA-256 for the manifest on the way, and anything
malformed (bad JSON, a missing field, a truncated gzip, a short CSV row) stops the import with a
:class:`DatasetImportError` naming the file and line.
"""
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import unicodedata
import zlib
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from recbole_gen.data.images import IMAGE_EXTENSIONS


class DatasetImportError(ValueError):
    """The raw files or the options of an import are wrong; the message names the file and line."""


@dataclasses.dataclass
class ImportOptions:
    """Options of ``recbole-gen import-dataset``: one field per command-line option (``k_core`` is
    ``--k-core``), each documented by its ``help``, which is also the option's help text."""

    input: Path = dataclasses.field(metadata={"help": "folder holding the raw files as published"})
    output: Path = dataclasses.field(metadata={
        "help": "dataset folder to create; its name is the dataset name (dataset/toys -> toys.inter, toys.item)"})
    images: Path | None = dataclasses.field(default=None, metadata={
        "help": "folder of item images, searched recursively for <item id>.<ext> (default: INPUT/images)"})
    category: str | None = dataclasses.field(default=None, metadata={
        "help": "amazon2023: the category's file stem (Toys -> Toys.jsonl.gz, meta_Toys.jsonl.gz); "
                "pixelrec/microlens: read only CSV files whose name contains it"})
    k_core: int = dataclasses.field(default=0, metadata={
        "help": "drop users and items with fewer than N interactions, repeatedly until none is left; 0 turns it off"})
    max_users: int | None = dataclasses.field(default=None, metadata={
        "help": "keep a seeded random sample of N users (before the k-core)"})
    seed: int = dataclasses.field(default=2024, metadata={"help": "seed of the --max-users sample"})
    require_images: bool = dataclasses.field(default=False, metadata={
        "help": "drop items without an image (and their interactions) instead of keeping them for rankers"})
    link: bool = dataclasses.field(default=False, metadata={
        "help": "hard-link images into the dataset instead of copying them (same filesystem only)"})
    force: bool = dataclasses.field(default=False, metadata={"help": "replace an existing output folder"})
    download_images: bool = dataclasses.field(default=False, metadata={
        "help": "first fetch each item's main image URL into the image folder (the only network access)"})
    download_workers: int = dataclasses.field(default=8, metadata={"help": "parallel downloads"})
    download_retries: int = dataclasses.field(default=3, metadata={
        "help": "retries of a download after a timeout, a dropped connection or an HTTP 5xx/408/429"})
    download_timeout: float = dataclasses.field(default=30.0, metadata={"help": "seconds per request"})

    def __post_init__(self):
        self.input, self.output = Path(self.input), Path(self.output)
        self.images = Path(self.images) if self.images else self.input / "images"
        for name, least in {"k_core": 0, "max_users": 1, "download_workers": 1, "download_retries": 0}.items():
            value = getattr(self, name)
            if value is not None and value < least:
                raise DatasetImportError(f"--{name.replace('_', '-')} must be {least} or more, not {value}")
        if self.download_timeout <= 0:
            raise DatasetImportError(f"--download-timeout must be more than 0 seconds, not {self.download_timeout}")


@dataclasses.dataclass
class Item:
    """What an importer knows of one item besides its id."""

    title: str = ""
    url: str | None = None  # the main image's URL, for --download-images


@dataclasses.dataclass(frozen=True)
class Importer:
    """One raw format. ``read_interactions(options, inputs) -> Interactions`` streams the interactions;
    ``read_items(options, inputs, tokens) -> {token: Item}`` streams the item file, keeping only
    ``tokens`` (the items left after filtering), so a large catalogue is never held whole."""

    read_interactions: Callable
    read_items: Callable
    image_urls: bool = False  # the raw files name image URLs (--download-images works)


class Record:
    """One JSON line or CSV row with the place it came from, so that every complaint names file and line."""

    __slots__ = ("where", "data")

    def __init__(self, where, data):
        self.where, self.data = where, data

    def error(self, reason):
        return DatasetImportError(f"{self.where}: {reason}")

    def require(self, key):
        value = self.data.get(key)
        if value is None or value == "":
            raise self.error(f"missing field '{key}'")
        return value

    def token(self, key):
        """An id field: text RecBole can hold as a ``token`` (no whitespace or control characters)."""
        value = str(self.require(key)).strip()
        if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in value) or value.startswith('"'):
            raise self.error(f"field '{key}' is not a usable id: {value!r} (spaces, tabs, control characters)")
        return value

    def number(self, key):
        value = self.require(key)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise self.error(f"field '{key}' is not a number: {value!r}") from None

    def text(self, key):
        value = self.data.get(key)
        return "" if value is None else str(value)


class InputFiles:
    """The raw files an import reads. Each is streamed once; :attr:`read` lists them with size, SHA-256
    and the number of lines read, as manifest.json records them."""

    def __init__(self):
        self.read = []

    def jsonl(self, path):
        """``Record`` per non-empty line of a JSON Lines file, gzipped (``.gz``) or not."""
        path = Path(path)
        line_no = 0
        tracked = _Tracked(path)
        with tracked as stream:
            lines = gzip.GzipFile(fileobj=stream) if path.suffix == ".gz" else stream
            try:
                for line_no, line in enumerate(lines, start=1):
                    if line.strip():
                        yield _json_object(line, f"{path}, line {line_no}")
            except EOFError:
                raise DatasetImportError(f"{path}, line {line_no + 1}: truncated gzip (the file ends early)") from None
            except (OSError, zlib.error) as error:
                raise DatasetImportError(f"{path}, line {line_no + 1}: unreadable ({error})") from None
        self._record(path, tracked.sha256, line_no)

    def csv(self, path, columns):
        """``Record`` per row of a CSV file with a header, its data keyed by the names of ``columns``:
        ``{name: (accepted header names, ...)}``; the first accepted name the header has is used."""
        path = Path(path)
        tracked = _Tracked(path)
        with tracked as stream:
            reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", newline=""))
            try:
                header = next(reader, [])
                positions = {}
                for name, accepted in columns.items():
                    found = next((a for a in accepted if a in header), None)
                    if found is None:
                        raise DatasetImportError(f"{path}, line 1: no column {' or '.join(accepted)} "
                                                 f"in the header {header}")
                    positions[name] = header.index(found)
                for row in reader:
                    if not row:
                        continue
                    where = f"{path}, line {reader.line_num}"
                    if len(row) != len(header):
                        raise DatasetImportError(f"{where}: {len(row)} fields, the header has {len(header)}")
                    yield Record(where, {name: row[p] for name, p in positions.items()})
            except UnicodeDecodeError:
                raise DatasetImportError(f"{path}, line {reader.line_num + 1}: not UTF-8 text") from None
            except csv.Error as error:
                raise DatasetImportError(f"{path}, line {reader.line_num}: {error}") from None
        self._record(path, tracked.sha256, reader.line_num)

    def _record(self, path, sha256, lines):
        self.read.append({"file": path.name, "path": str(path.resolve()), "bytes": path.stat().st_size,
                          "sha256": sha256, "lines": lines})


def _json_object(line, where):
    try:
        data = json.loads(line.rstrip(b"\r\n"))
    except UnicodeDecodeError:
        raise DatasetImportError(f"{where}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise DatasetImportError(f"{where}: bad JSON ({error.msg}: column {error.colno})") from None
    if not isinstance(data, dict):
        raise DatasetImportError(f"{where}: not a JSON object")
    return Record(where, data)


class _Tracked:
    """A raw file opened as a buffered binary stream that feeds a progress bar (bytes, with ETA) and a
    SHA-256 as it is read; leaving the block reads whatever the reader left, so ``sha256`` is the file's."""

    def __init__(self, path):
        if not path.is_file():
            raise DatasetImportError(f"{path}: no such file")
        self.path, self.sha256 = path, None

    def __enter__(self):
        self._file = open(self.path, "rb")
        self._bar = tqdm(total=self.path.stat().st_size, desc=f"reading {self.path.name}", unit="B",
                         unit_scale=True, unit_divisor=1024)
        self._tap = _Tap(self._file, hashlib.sha256(), self._bar)
        return io.BufferedReader(self._tap, buffer_size=1 << 20)

    def __exit__(self, kind, *_):
        try:
            if kind is None:
                while self._tap.readinto(bytearray(1 << 20)):
                    pass
                self.sha256 = self._tap.digest.hexdigest()
        finally:
            self._bar.close()
            self._file.close()


class _Tap(io.RawIOBase):
    def __init__(self, file, digest, bar):
        super().__init__()
        self._file, self.digest, self._bar = file, digest, bar

    def readable(self):
        return True

    def readinto(self, buffer):
        n = self._file.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self._bar.update(n)
        return n


def csv_header(path):
    """The header row of a CSV file (to tell files apart by their columns)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f), [])


def find_file(folder, names, what):
    """The first of ``names`` that exists in ``folder``, or an error saying which names were looked for."""
    for name in names:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise DatasetImportError(f"{folder}: no {what} ({' or '.join(names)})")


def find_images(folder):
    """``{file stem: path}`` of the image files under ``folder`` (any depth, e.g. H&M's ``0XX/``); when a
    stem has several files, the extension first in ``IMAGE_EXTENSIONS`` wins."""
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    found = {}
    for path in sorted(Path(folder).rglob("*")):
        ext = path.suffix.lower()
        if ext in rank and path.is_file():
            best = found.get(path.stem)
            if best is None or rank[ext] < rank[best.suffix.lower()]:
                found[path.stem] = path
    return found

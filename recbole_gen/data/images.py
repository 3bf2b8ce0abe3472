"""Item images next to RecBole's atomic files: find, validate, decode, resize and cache them.

Dataset format (see docs/data.md). The primary convention: the ``.item`` atomic file has an
image field (``image_field``, default ``image``, declared ``image:token``) whose value is the
image's path relative to the dataset folder, e.g. ``images/1F600.png``. When the ``.item`` file
has no such column (or there is no ``.item`` file, as for a bare ``ml-100k``), images are looked
up by item token in the folder ``image_dir`` (default ``images``): ``images/<item token>.<ext>``.
Paths must stay inside the dataset folder unless ``allow_external_images`` is set.

The image path and the optional item text are read straight from the ``.item`` file (exactly as
written, spaces included), so neither needs to be in RecBole's ``load_col``; RecBole's remapping,
filtering and splits are untouched. The store is built once per dataset by
:class:`recbole_gen.data.dataset.ItemImagesMixin`; its rows then follow RecBole's internal item ids
(``dataset.id2token(ITEM_ID_FIELD, i)``); row 0 is RecBole's padding item.
"""
import csv
import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from recbole_gen.config import Settings
from recbole_gen.data.cache import CachedRows, FeatureCache
from recbole_gen.files import folder_lock

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
TEXT_FIELD_CANDIDATES = ("name", "title", "movie_title")
POLICIES = ("error", "skip", "placeholder")
FITS = ("pad", "crop", "stretch")
PLACEHOLDER_HASH = "placeholder"
SHOW = 10  # how many ids/files an error message names before it gives the count
COMPUTE_BATCH = 1024  # items per ``cached`` compute call: pixels are converted to float a batch at a time


class ItemImageError(ValueError):
    """An item image is missing, unreadable or unexpected; the message names items and files."""


class ImageTooLarge(ValueError):
    """An image with more pixels than ``image_max_pixels``: refused before it is decoded."""


@dataclass(frozen=True)
class ImageSettings(Settings):
    """How item images are read (properties/overall.yaml; docs/data.md), checked before any image is."""

    image_size: int
    image_fit: str
    image_background: list
    image_policy: str
    image_max_pixels: int

    def check(self):
        self.require(self.image_size >= 1, "image_size", ">= 1")
        self.require(self.image_fit in FITS, "image_fit", f"one of {', '.join(FITS)}")
        self.require(self.image_policy in POLICIES, "image_policy", f"one of {', '.join(POLICIES)}")
        self.require(len(self.image_background) == 3 and all(isinstance(v, int) and 0 <= v <= 255
                                                              for v in self.image_background),
                     "image_background", "three integers in [0, 255] (red, green, blue)")
        self.require(self.image_max_pixels >= 1, "image_max_pixels", ">= 1")


def dataset_folder(config):
    """The dataset's folder (RecBole's ``data_path`` already ends with the dataset name)."""
    return Path(config["data_path"])


def cache_dir(config):
    """Where derived per-item data lives: ``cache_dir``, or ``<dataset folder>/.cache`` when it is ``~``."""
    return Path(config["cache_dir"]) if config["cache_dir"] else dataset_folder(config) / ".cache"


# ----------------------------------------------------------------------------- decoding


def to_rgb(img, background=(255, 255, 255)):
    """Any Pillow mode -> 8-bit RGB, scaling 16/32-bit data and compositing alpha on ``background``."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        scale = 65535.0 if (mode != "I" or a.max() > 255) else 255.0
        img = Image.fromarray(np.clip(a / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        a = np.asarray(img).astype(np.float64)
        a = a * 255.0 if a.max() <= 1.0 else a
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":  # palette, possibly with a transparent index
        img = img.convert("RGBA")
    if img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        canvas = Image.new("RGBA", img.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, img).convert("RGB")
    return img.convert("RGB")


def decode_image(path, size, fit="pad", background=(255, 255, 255), max_pixels=None):
    """Read one image file -> uint8 array [3, size, size]. Raises OSError/ValueError on bad files, and
    :class:`ImageTooLarge`, before decoding, for one of more than ``max_pixels`` pixels (a few KB of PNG can
    declare 13,000 x 13,000 pixels: 2.6 GB once decoded)."""
    with warnings.catch_warnings():  # Pillow's DecompressionBombWarning: the size is checked here, against the config
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    with img:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageTooLarge(f"{img.width} x {img.height} pixels, more than image_max_pixels ({max_pixels:,})")
        img.load()  # decode now: truncated or corrupt data fails here, inside our error handling
        img = ImageOps.exif_transpose(img)
        img = to_rgb(img, background)
    w, h = img.size
    if w != h and fit == "pad":
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), tuple(background))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    elif w != h and fit == "crop":
        img = ImageOps.fit(img, (min(w, h), min(w, h)), Image.Resampling.LANCZOS)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def file_hash(path):
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def to_float(pixels_u8):
    """uint8 ``[N, 3, S, S]`` (numpy or torch) -> float32 tensor in [0, 1]."""
    return torch.as_tensor(pixels_u8).float().div_(255.0)


def resize(pixels, size):
    """Pixels ``[N, 3, H, W]`` in [0, 1] at ``size`` x ``size`` (bilinear, antialiased when shrinking), float32;
    every model and encoder resizes with this one function, so a catalogue image means the same everywhere."""
    pixels = pixels.float()
    if size is None or pixels.shape[-2:] == (size, size):
        return pixels
    antialias = pixels.shape[-1] > size
    return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias).clamp_(0, 1)


def centred_unit(pixels, mean):
    """The pixel feature: flatten, subtract the catalogue's mean image, L2-normalise. Without the mean, every
    item on a white background looks alike; with it, a blurred or re-drawn item still finds itself."""
    return F.normalize((pixels.float() - mean.to(pixels.device)).flatten(1), dim=1)


# ----------------------------------------------------------------------------- the .item file


def read_item_columns(config, columns):
    """``{column: {item token: raw string}}`` for the named ``.item`` columns (exact text, spaces kept),
    plus the header's field names. Missing file -> ({}, [])."""
    path = dataset_folder(config) / f"{config['dataset']}.item"
    if not path.is_file():
        return {}, []
    iid = config["ITEM_ID_FIELD"]
    with open(path, newline="", encoding=config["encoding"]) as f:
        reader = csv.reader(f, delimiter=config["field_separator"], quoting=csv.QUOTE_NONE)
        header = next(reader, [])
        names = [h.split(":")[0] for h in header]
        if iid not in names:
            raise ItemImageError(f"{path}: the header has no item id field '{iid}' (header: {header})")
        pos = {c: names.index(c) for c in columns if c in names}
        out = {c: {} for c in pos}
        id_pos = names.index(iid)
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(names):
                raise ItemImageError(f"{path}, line {line_no}: {len(row)} fields, the header has {len(names)}")
            token = row[id_pos]
            for c, p in pos.items():
                out[c].setdefault(token, row[p])
    return out, names


# ----------------------------------------------------------------------------- the store


class ItemImageStore:
    """Item images (and texts) of a RecBole dataset, one row per item token (row 0: padding).

    Pixels stay on disk: a read-only memory map of the pixel cache (uint8), from which :meth:`pixels` reads and
    converts the rows asked for, so a process's memory does not grow with the catalogue's pixels. ``has_image``
    bool [item_num]; :meth:`item_texts`; ``item_hashes``; :meth:`cached` for derived per-item features (image
    tokens, embeddings) on disk.
    """

    def __init__(self, config, item_tokens, texts, hashes, pixels_u8, has_image, problems):
        self.config = config
        self.item_tokens = list(item_tokens)
        self.item_num = len(self.item_tokens)
        self.image_size = int(config["image_size"])
        self.folder = dataset_folder(config)
        self.cache = FeatureCache(cache_dir(config), lock=lambda: folder_lock(self.folder))
        self.item_hashes = list(hashes)
        self.has_image = torch.as_tensor(has_image, dtype=torch.bool)
        self._texts = list(texts)
        self._pixels_u8 = pixels_u8
        self._problems = problems

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_tokens(cls, config, tokens):
        """Find, validate and decode (through the pixel cache) the images of ``tokens`` (``tokens[0]`` is the
        padding item), under ``image_policy``: ``error`` raises :class:`ItemImageError` naming every bad item."""
        policy = ImageSettings.from_config(config).image_policy
        tokens = [str(t) for t in tokens]
        problems = _Problems()
        texts = _texts(config, tokens)
        paths = _image_paths(config, tokens, problems)
        hashes = _decode_all(config, tokens, paths, problems)
        bad = problems.items()
        if bad and policy == "error":
            raise ItemImageError(problems.message(dataset_folder(config)))
        has_image = np.array([bool(h) for h in hashes])
        if bad:
            logger.warning(f"image_policy={policy}: {len(bad)} item(s) without a usable image ({problems.summary()})")
            if policy == "placeholder":
                hashes = [h or (PLACEHOLDER_HASH if i else "") for i, h in enumerate(hashes)]
        return cls(config, tokens, texts, hashes, _pixel_rows(config, hashes), has_image, problems)

    def select(self, tokens):
        """The store for ``tokens`` in that row order (e.g. RecBole's internal ids after remapping); rows come
        from this store, nothing is read again. Tokens it does not hold get empty rows."""
        row = {t: i for i, t in enumerate(self.item_tokens) if i}
        index = np.array([row.get(str(t), 0) if k else 0 for k, t in enumerate(tokens)])
        return ItemImageStore(self.config, [str(t) for t in tokens], [self._texts[i] for i in index],
                              [self.item_hashes[i] for i in index], self._pixels_u8.select(index),
                              self.has_image.numpy()[index] & (index > 0), self._problems)

    def problem_items(self):
        """Item tokens whose image is missing or unusable (empty under ``image_policy: error``)."""
        return sorted(self._problems.items())

    # -- public API -----------------------------------------------------------------------

    def pixels(self, items=None):
        """float32 ``[len(items), 3, S, S]`` in [0, 1] for internal ids ``items``, read from disk (all rows when
        ``None``: one full float copy, so batch over ids for a large catalogue). The padding row and items without an
        image are zeros (flat grey under ``image_policy: placeholder``)."""
        return to_float(self._pixels_u8[slice(None) if items is None else torch.as_tensor(items).cpu().numpy()])

    def item_texts(self):
        """Text (title/name) per internal item id; '' for the padding item and items without text."""
        return list(self._texts)

    def item_column(self, field):
        """The ``.item`` file's raw values of ``field`` per internal item id ('' for padding / no value): item
        metadata such as a category, read like the image paths (no need for RecBole's ``load_col``)."""
        columns, header = read_item_columns(self.config, [field])
        if field not in columns:
            raise ItemImageError(f"'{field}' is not a column of {self.folder / (self.config['dataset'] + '.item')} "
                                 f"(columns: {header or 'no .item file'})")
        return [columns[field].get(t, "") if i else "" for i, t in enumerate(self.item_tokens)]

    def cached(self, kind, settings, compute, shared=False):
        """Per-item derived features through the disk cache, :class:`~recbole_gen.data.cache.CachedRows`
        ``[item_num, ...]`` (read on demand; ``np.asarray`` reads them all).

        ``compute(item_indices: LongTensor, pixels: FloatTensor[len, 3, S, S]) -> np.ndarray`` is called in
        batches of :data:`COMPUTE_BATCH` for the items whose entry (image content hash + ``settings`` + pixel
        settings) is missing; items sharing identical image bytes share one entry. Padding and image-less
        items get zero rows. ``shared``: every rank calls this together with a ``compute`` split over the ranks
        (:meth:`~recbole_gen.data.cache.ItemCache.lookup`).
        """
        full = {"settings": settings, "pixels": _pixel_settings(self.config)}

        def run(positions):
            chunks = [np.asarray(compute(torch.as_tensor(part), self.pixels(part)))
                      for part in np.array_split(positions, max(1, -(-len(positions) // COMPUTE_BATCH)))]
            return np.concatenate(chunks)

        rows, n = self.cache.lookup(kind, full, self.item_hashes, run, shared=shared)
        if n:
            logger.info(f"cache '{kind}': computed {n} item(s), {sum(1 for h in self.item_hashes if h) - n} from cache")
        if rows is None:
            raise ItemImageError("no item has an image: nothing to compute")
        return rows


def _texts(config, tokens):
    text_field = config["item_text_field"]
    wanted = [text_field] if text_field else list(TEXT_FIELD_CANDIDATES)
    columns, header = read_item_columns(config, wanted)
    if text_field is None:  # not set: the first usual column that exists
        text_field = next((c for c in TEXT_FIELD_CANDIDATES if c in columns), None)
    elif text_field and text_field not in columns:  # '' turns texts off
        raise ItemImageError(
            f"item_text_field '{text_field}' is not a column of {dataset_folder(config) / (config['dataset'] + '.item')} "
            f"(columns: {header or 'no .item file'}); set item_text_field to one of them or to ''"
        )
    if not text_field:
        return [""] * len(tokens)
    column = columns[text_field]
    return [column.get(t, "") if i else "" for i, t in enumerate(tokens)]


def _image_paths(config, tokens, problems):
    """Per token: the image file (a Path inside the dataset folder) or None, with each problem recorded."""
    folder = dataset_folder(config)
    image_field, image_dir = config["image_field"], config["image_dir"]
    if not config["allow_external_images"] and not (folder / image_dir).resolve().is_relative_to(folder.resolve()):
        raise ItemImageError(f"image_dir '{image_dir}' is outside the dataset folder {folder}: nothing there is read; "
                             f"give a folder inside it, or set allow_external_images: True")
    columns, _ = read_item_columns(config, [image_field])
    paths = [None] * len(tokens)
    if image_field in columns:
        column = columns[image_field]
        for i, t in enumerate(tokens[1:], start=1):
            value = column.get(t, "")
            if not value:
                problems.add("no image", t, f"no '{image_field}' value in {config['dataset']}.item")
            else:
                paths[i] = _contained(config, folder, value, t, problems)
        referenced = {p.resolve() for p in paths if p is not None}
        stray = [p for p in _image_files(folder / image_dir) if p.resolve() not in referenced]
        if stray:
            logger.warning(
                f"{len(stray)} file(s) in {folder / image_dir} belong to no item's '{image_field}' and are "
                f"ignored: {', '.join(p.name for p in stray[:SHOW])}{' ...' if len(stray) > SHOW else ''}"
            )
    elif (folder / image_dir).is_dir():
        by_token = {}
        for p in _image_files(folder / image_dir):
            by_token.setdefault(p.stem, []).append(p)
        known = set(tokens[1:])
        for stem, files in by_token.items():
            if stem not in known:
                problems.add("image for unknown item", stem, files[0].relative_to(folder))
            elif len(files) > 1:
                problems.add("several images", stem, ", ".join(str(f.relative_to(folder)) for f in files))
        for i, t in enumerate(tokens[1:], start=1):
            files = by_token.get(t)
            if not files:
                problems.add("no image", t, f"no {image_dir}/{t}.<{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}>")
            elif len(files) == 1:
                paths[i] = _contained(config, folder, files[0].relative_to(folder), t, problems)
    else:
        raise ItemImageError(
            f"dataset '{config['dataset']}' in {folder} has no item images: neither an '{image_field}' column in "
            f"{config['dataset']}.item (set image_field) nor a folder {folder / image_dir} of "
            f"<item token>.png files (set image_dir). See docs/data.md."
        )
    return paths


def _contained(config, folder, value, token, problems):
    """``value`` (relative to the dataset folder) as a file path, or None with a problem recorded: missing, or
    outside the dataset folder (an absolute path, ``..``, a symlink out) unless ``allow_external_images``."""
    path = Path(value) if Path(value).is_absolute() else folder / value
    if not config["allow_external_images"] and not path.resolve().is_relative_to(folder.resolve()):
        problems.add("outside the dataset folder", token,
                     f"{value} (paths are relative to {folder}; set allow_external_images: True to allow others)")
        return None
    if not path.is_file():
        problems.add("missing file", token, value)
        return None
    return path


def _pixel_settings(config):
    return {"size": int(config["image_size"]), "fit": config["image_fit"],
            "background": [int(v) for v in config["image_background"]], "resample": "lanczos", "version": 1}


def _decode_all(config, tokens, paths, problems):
    """Content hashes ('' = no usable image), every usable image in the pixel cache: decodes only what it lacks (and
    warns about new images of a single flat colour)."""
    folder = dataset_folder(config)
    settings = _pixel_settings(config)
    size, fit, background = settings["size"], settings["fit"], tuple(settings["background"])
    hashes = [""] * len(tokens)
    for i, path in enumerate(paths):
        if path is not None:
            try:
                hashes[i] = file_hash(path)
            except OSError as error:
                problems.add("unreadable", tokens[i], f"{_relative(path, folder)} ({error})")
    cache = FeatureCache(cache_dir(config), lock=lambda: folder_lock(folder))
    decoded = {}
    for i in cache.missing("pixels", settings, hashes):
        try:
            decoded[hashes[i]] = decode_image(paths[i], size, fit, background, config["image_max_pixels"])
        except ImageTooLarge as error:
            problems.add("too large", tokens[i], f"{_relative(paths[i], folder)} ({error})")
            hashes = ["" if h == hashes[i] else h for h in hashes]
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            problems.add("unreadable", tokens[i], f"{_relative(paths[i], folder)} ({type(error).__name__}: {error})")
            hashes = ["" if h == hashes[i] else h for h in hashes]
    # entries are content-addressed, so good items are cached even if others are bad
    if decoded:
        cache.put("pixels", settings, list(decoded), np.stack(list(decoded.values())))
    blank = [tokens[i] for i, h in enumerate(hashes) if h in decoded and (decoded[h] == decoded[h][:, :1, :1]).all()]
    if blank:
        logger.warning(f"{len(blank)} item image(s) are a single flat colour (check them): "
                       f"{', '.join(blank[:SHOW])}{' ...' if len(blank) > SHOW else ''}")
    logger.info(f"item images: {sum(1 for h in hashes[1:] if h)}/{len(tokens) - 1} items at {size}px, "
                f"{len(decoded)} decoded, the rest from cache {cache.root}")
    return hashes


def _pixel_rows(config, hashes):
    """The pixel cache's rows of ``hashes``, memory-mapped (:class:`~recbole_gen.data.cache.CachedRows`); the
    placeholder's flat grey is an entry of its own."""
    settings, size = _pixel_settings(config), int(config["image_size"])
    cache = FeatureCache(cache_dir(config), lock=lambda: folder_lock(dataset_folder(config)))
    if PLACEHOLDER_HASH in hashes and len(cache.missing("pixels", settings, [PLACEHOLDER_HASH])):
        cache.put("pixels", settings, [PLACEHOLDER_HASH], np.full((1, 3, size, size), 128, dtype=np.uint8))
    rows = cache.rows("pixels", settings, hashes)
    return rows if rows is not None else CachedRows(np.zeros((0, 3, size, size), np.uint8), np.full(len(hashes), -1))


def _relative(path, folder):
    try:
        return Path(path).relative_to(folder)
    except ValueError:
        return path


class _Problems:
    def __init__(self):
        self.by_kind = {}

    def add(self, kind, token, detail):
        self.by_kind.setdefault(kind, []).append((str(token), str(detail)))

    def items(self):
        return {t for entries in self.by_kind.values() for t, _ in entries}

    def summary(self):
        return "; ".join(f"{kind}: {len(v)}" for kind, v in self.by_kind.items())

    def message(self, folder):
        """One line: the count, then per kind the first items and files, then what to do."""
        total = sum(len(v) for v in self.by_kind.values())
        parts = []
        for kind, entries in self.by_kind.items():
            shown = ", ".join(f"item '{t}' -> {d}" for t, d in entries[:SHOW])
            more = f" ... and {len(entries) - SHOW} more" if len(entries) > SHOW else ""
            parts.append(f"{kind} ({len(entries)}): {shown}{more}")
        return (f"{total} item image problem(s) in {folder}: {'; '.join(parts)}. Fix or remove those files, or set "
                f"image_policy: skip (drop the items) or placeholder (a flat grey image); see docs/data.md")


def _image_files(folder):
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

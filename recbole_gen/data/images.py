"""Item images next to RecBole's atomic files: find, validate, decode, resize and cache them.

Dataset format (see docs/data.md). The primary convention: the ``.item`` atomic file has an
image field (``image_field``, default ``image``, declared ``image:token``) whose value is the
image's path relative to the dataset folder, e.g. ``images/1F600.png``. When the ``.item`` file
has no such column (or there is no ``.item`` file, as for a bare ``ml-100k``), images are looked
up by item token in the folder ``image_dir`` (default ``images``): ``images/<item token>.<ext>``.

The image path and the optional item text are read straight from the ``.item`` file (exactly as
written, spaces included), so neither needs to be in RecBole's ``load_col``; RecBole's remapping,
filtering and splits are untouched. Rows of everything here follow RecBole's internal item ids
(``dataset.id2token(ITEM_ID_FIELD, i)``); row 0 is RecBole's padding item.
"""
import csv
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from recbole_gen.data.cache import FeatureCache
from recbole_gen.utils import config_value

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
TEXT_FIELD_CANDIDATES = ("name", "title", "movie_title")
POLICIES = ("error", "skip", "placeholder")
PLACEHOLDER_HASH = "placeholder"
SHOW = 10  # how many ids/files an error message names before it gives the count


class ItemImageError(ValueError):
    """An item image is missing, unreadable or unexpected; the message names items and files."""


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


def decode_image(path, size, fit="pad", background=(255, 255, 255)):
    """Read one image file -> uint8 array [3, size, size]. Raises OSError/ValueError on bad files."""
    with Image.open(path) as img:
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
    elif fit not in ("pad", "crop", "stretch"):
        raise ValueError(f"image_fit must be pad, crop or stretch, not '{fit}'")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def file_hash(path):
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


# ----------------------------------------------------------------------------- the .item file


def read_item_columns(config, columns):
    """``{column: {item token: raw string}}`` for the named ``.item`` columns (exact text, spaces kept),
    plus the header's field names. Missing file -> ({}, [])."""
    folder, name = Path(config["data_path"]), config["dataset"]
    path = folder / f"{name}.item"
    if not path.is_file():
        return {}, []
    sep = config_value(config, "field_separator", "\t")
    encoding = config_value(config, "encoding", "utf-8")
    iid = config_value(config, "ITEM_ID_FIELD", "item_id")
    with open(path, newline="", encoding=encoding) as f:
        reader = csv.reader(f, delimiter=sep, quoting=csv.QUOTE_NONE)
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
    """Item images (and texts) of a RecBole dataset, one row per internal item id.

    ``pixels()`` [item_num, 3, S, S] floats in [0, 1] (row 0, the padding item, is zeros);
    ``has_image`` bool [item_num]; ``item_texts()``; ``item_hashes``; ``cached(kind, settings,
    compute)`` for derived per-item features (image tokens, embeddings) on disk.
    """

    def __init__(self, config, item_tokens, paths, texts, folder, cache_dir, problems=None, policy=None):
        self.config = config
        self.item_tokens = list(item_tokens)
        self.item_num = len(self.item_tokens)
        self.folder = Path(folder)
        self.image_size = int(config_value(config, "image_size", 32))
        self.policy = policy or config_value(config, "image_policy", "error")
        if self.policy not in POLICIES:
            raise ValueError(f"image_policy must be one of {', '.join(POLICIES)}, not '{self.policy}'")
        self.fit = config_value(config, "image_fit", "pad")
        self.background = tuple(int(v) for v in config_value(config, "image_background", [255, 255, 255]))
        self.paths = paths  # per internal id: Path or None
        self._texts = texts
        self.cache = FeatureCache(cache_dir)
        self._problems = problems if problems is not None else _Problems()
        self.stats = {"decoded": 0, "pixels_from_cache": 0}
        self._pixels_u8 = None
        self._pixels = None
        self._load()

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_dataset(cls, config, dataset):
        """Build the store for a RecBole dataset (after ``create_dataset``); validates every image."""
        tokens = [str(t) for t in dataset.id2token(dataset.iid_field, np.arange(dataset.item_num))]
        return cls.from_tokens(config, tokens)

    @classmethod
    def from_tokens(cls, config, tokens, policy=None):
        """The store for item tokens in row order (``tokens[0]`` is the padding item)."""
        folder = Path(config["data_path"])
        image_field = config_value(config, "image_field", "image")
        image_dir = config_value(config, "image_dir", "images")
        text_field = config["item_text_field"] if _has(config, "item_text_field") else None
        wanted = [image_field] + ([text_field] if text_field else list(TEXT_FIELD_CANDIDATES))
        columns, header = read_item_columns(config, wanted)
        if text_field is None:  # not set: the first usual column that exists
            text_field = next((c for c in TEXT_FIELD_CANDIDATES if c in columns), None)
        elif text_field and text_field not in columns:  # '' turns texts off
            raise ItemImageError(
                f"item_text_field '{text_field}' is not a column of {folder / (config['dataset'] + '.item')} "
                f"(columns: {header or 'no .item file'}); set item_text_field to one of them or to ''"
            )
        texts = [""] * len(tokens)
        if text_field:
            col = columns[text_field]
            texts = [col.get(t, "") if i else "" for i, t in enumerate(tokens)]

        problems = _Problems()
        paths = [None] * len(tokens)
        if image_field in columns:
            col = columns[image_field]
            for i, t in enumerate(tokens[1:], start=1):
                value = col.get(t, "")
                if not value:
                    problems.add("no image", t, f"no '{image_field}' value in {config['dataset']}.item")
                    continue
                path = Path(value) if Path(value).is_absolute() else folder / value
                if not path.is_file():
                    problems.add("missing file", t, value)
                    continue
                paths[i] = path
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
                    paths[i] = files[0]
        else:
            raise ItemImageError(
                f"dataset '{config['dataset']}' in {folder} has no item images: neither an '{image_field}' column in "
                f"{config['dataset']}.item (set image_field) nor a folder {folder / image_dir} of "
                f"<item token>.png files (set image_dir). See docs/data.md."
            )
        cache_dir = config_value(config, "cache_dir", None) or folder / ".cache"
        return cls(config, tokens, paths, texts, folder, cache_dir, problems, policy)

    def _load(self):
        problems = self._problems
        n = self.item_num
        hashes = [""] * n
        for i, path in enumerate(self.paths):
            if path is None:
                continue
            try:
                hashes[i] = file_hash(path)
            except OSError as error:
                problems.add("unreadable", self.item_tokens[i], f"{self._rel(path)} ({error})")
                self.paths[i] = None
        settings = self._pixel_settings()
        rows, missing = self.cache.fetch("pixels", settings, hashes)
        decoded_hashes, decoded = [], []
        for i in missing:
            try:
                decoded.append(decode_image(self.paths[i], self.image_size, self.fit, self.background))
                decoded_hashes.append(hashes[i])
                self.stats["decoded"] += 1
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                problems.add("unreadable", self.item_tokens[i], f"{self._rel(self.paths[i])} ({type(error).__name__}: {error})")
        failed = set(hashes[i] for i in missing) - set(decoded_hashes)
        hashes = ["" if h in failed else h for h in hashes]
        self.stats["pixels_from_cache"] = sum(1 for h in hashes if h) - sum(1 for h in hashes if h in set(decoded_hashes))
        # entries are content-addressed, so good items are cached even if others are bad
        self.cache.put("pixels", settings, decoded_hashes, np.stack(decoded) if decoded else np.zeros((0,)))
        bad = problems.items()
        if bad and self.policy == "error":
            raise ItemImageError(problems.message(self.folder))
        shape = (n, 3, self.image_size, self.image_size)
        if rows is None or rows.shape != shape:
            rows = np.zeros(shape, dtype=np.uint8)
        by_hash = dict(zip(decoded_hashes, decoded))
        for i, h in enumerate(hashes):
            if h in by_hash:
                rows[i] = by_hash[h]
            elif not h:
                rows[i] = 0
        has_image = np.array([bool(h) for h in hashes])
        if bad:
            logger.warning(f"image_policy={self.policy}: {len(bad)} item(s) without a usable image ({problems.summary()})")
            if self.policy == "placeholder":
                grey = np.full((3, self.image_size, self.image_size), 128, dtype=np.uint8)
                for i, t in enumerate(self.item_tokens):
                    if i and not hashes[i]:
                        hashes[i], rows[i] = PLACEHOLDER_HASH, grey
        flat = rows.reshape(n, -1)
        blank = [self.item_tokens[i] for i in range(1, n) if has_image[i] and flat[i].min() == flat[i].max()]
        if blank:
            logger.warning(f"{len(blank)} item image(s) are a single flat colour (check them): "
                           f"{', '.join(blank[:SHOW])}{' ...' if len(blank) > SHOW else ''}")
        self.item_hashes = hashes
        self.has_image = torch.from_numpy(has_image)
        self._pixels_u8 = rows
        logger.info(f"item images: {int(has_image[1:].sum())}/{n - 1} items at {self.image_size}px, "
                    f"{self.stats['decoded']} decoded, {self.stats['pixels_from_cache']} from cache {self.cache.root}")

    def problem_items(self):
        """Item tokens whose image is missing or unusable (empty under ``image_policy: error``)."""
        return sorted(self._problems.items())

    def _pixel_settings(self):
        return {"size": self.image_size, "fit": self.fit, "background": list(self.background),
                "resample": "lanczos", "version": 1}

    def _rel(self, path):
        try:
            return Path(path).relative_to(self.folder)
        except ValueError:
            return path

    # -- public API -----------------------------------------------------------------------

    def pixels(self):
        """float32 [item_num, 3, S, S] in [0, 1]; row 0 and rows of items without image are zeros
        (under ``image_policy: placeholder`` those items get a flat grey image instead)."""
        if self._pixels is None:
            self._pixels = torch.from_numpy(self._pixels_u8).float().div_(255.0)
        return self._pixels

    def item_texts(self):
        """Text (title/name) per internal item id; '' for the padding item and items without text."""
        return list(self._texts)

    def cached(self, kind, settings, compute):
        """Per-item derived features through the disk cache, ``np.ndarray [item_num, ...]``.

        ``compute(item_indices: LongTensor, pixels: FloatTensor[len, 3, S, S]) -> np.ndarray`` is
        called once, for the items whose entry (image content hash + ``settings`` + image size) is
        missing; items sharing identical image bytes share one entry. Padding and image-less items
        get zero rows.
        """
        full = {"settings": settings, "pixels": self._pixel_settings()}
        pixels = self.pixels()

        def run(positions):
            idx = torch.as_tensor(positions, dtype=torch.long)
            return np.asarray(compute(idx, pixels[idx]))

        rows, n = self.cache.lookup(kind, full, self.item_hashes, run)
        if n:
            logger.info(f"cache '{kind}': computed {n} item(s), {sum(1 for h in self.item_hashes if h) - n} from cache")
        if rows is None:
            raise ItemImageError("no item has an image: nothing to compute")
        return rows


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
        total = sum(len(v) for v in self.by_kind.values())
        lines = [f"{total} item image problem(s) in {folder} ({self.summary()}):"]
        for kind, entries in self.by_kind.items():
            shown = ", ".join(f"item '{t}' -> {d}" for t, d in entries[:SHOW])
            more = f" ... and {len(entries) - SHOW} more" if len(entries) > SHOW else ""
            lines.append(f"  {kind} ({len(entries)}): {shown}{more}")
        lines.append("Fix or remove those files, or set image_policy: skip (drop the items) or placeholder "
                     "(a flat grey image); see docs/data.md.")
        return "\n".join(lines)


def _image_files(folder):
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _has(config, key):
    try:
        return config[key] is not None
    except (KeyError, TypeError):
        return False


def items_without_images(config):
    """Item tokens of a dataset's raw files (``.item`` and ``.inter``) that have no usable image;
    used by ``create_dataset`` under ``image_policy: skip`` to drop them before RecBole remaps ids.
    Decoded pixels land in the cache, so the store built afterwards decodes nothing again."""
    folder, name = Path(config["data_path"]), config["dataset"]
    iid = config_value(config, "ITEM_ID_FIELD", "item_id")
    tokens = {}
    for suffix in ("item", "inter"):
        path = folder / f"{name}.{suffix}"
        if not path.is_file():
            continue
        sep = config_value(config, "field_separator", "\t")
        with open(path, newline="", encoding=config_value(config, "encoding", "utf-8")) as f:
            reader = csv.reader(f, delimiter=sep, quoting=csv.QUOTE_NONE)
            names = [h.split(":")[0] for h in next(reader, [])]
            if iid not in names:
                continue
            k = names.index(iid)
            for row in reader:
                if len(row) > k and row[k]:
                    tokens.setdefault(row[k], None)
    store = ItemImageStore.from_tokens(config, ["[PAD]", *tokens], policy="skip")
    return set(store.problem_items())

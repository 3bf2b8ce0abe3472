"""A disk cache of per-item arrays keyed by image content hash and settings.

One file per ``(kind, settings)``: ``<root>/<kind>/<digest of settings>.npz`` holding the content
hashes it knows and one row per hash. A lookup returns the rows it has and computes only the
missing ones, so a changed image (new hash) or a changed setting (new file) invalidates exactly
its entries. Files are written to a temporary name in the same folder and renamed into place,
so a crash never leaves half a cache file; a cache file that cannot be read is ignored and
rebuilt. Writes hold ``lock`` (the dataset folder's shared lock), so a dataset rebuild never swaps the
folder from under a cache write.
"""
import contextlib
import json
import logging
from pathlib import Path

import numpy as np

from recbole_gen.files import atomic_write, atomic_write_bytes, digest

logger = logging.getLogger(__name__)


class FeatureCache:
    """Content-addressed rows on disk: ``lookup(kind, settings, hashes, compute)``."""

    def __init__(self, root, lock=contextlib.nullcontext):
        self.root = Path(root)
        self.lock = lock

    def file(self, kind, settings):
        return self.root / kind / f"{digest(settings, 20)}.npz"

    def _load(self, path):
        if not path.is_file():
            return {}, None
        try:
            with np.load(path, allow_pickle=False) as data:
                hashes, values = data["hashes"], data["values"]
        except Exception as error:  # a damaged cache file is rebuilt, never trusted
            logger.warning(f"ignoring unreadable cache file {path}: {error}")
            return {}, None
        if len(hashes) != len(values):
            logger.warning(f"ignoring inconsistent cache file {path}")
            return {}, None
        return {str(h): i for i, h in enumerate(hashes)}, values

    def fetch(self, kind, settings, hashes):
        """``(rows or None, missing)``: stored rows for ``hashes`` ('' = no entry, a zero row) and
        the positions (one per distinct hash) whose entries are not stored."""
        index, stored = self._load(self.file(kind, settings))
        missing, seen = [], set()
        for pos, h in enumerate(hashes):
            if h and h not in index and h not in seen:
                seen.add(h)
                missing.append(pos)
        if stored is None:
            return None, missing
        rows = np.zeros((len(hashes), *stored.shape[1:]), dtype=stored.dtype)
        for pos, h in enumerate(hashes):
            if h in index:
                rows[pos] = stored[index[h]]
        return rows, missing

    def put(self, kind, settings, new_hashes, new_rows):
        """Add entries (merged with what is stored; same-shaped rows only) with an atomic rewrite."""
        new_rows = np.asarray(new_rows)
        if len(new_hashes) == 0:
            return
        path = self.file(kind, settings)
        index, stored = self._load(path)
        if stored is not None and (stored.shape[1:] != new_rows.shape[1:] or stored.dtype != new_rows.dtype):
            logger.info(f"cache '{kind}': stored rows have another shape/dtype; replacing them")
            index, stored = {}, None
        keep = [h for h in index if h not in set(new_hashes)]
        hashes = np.array(keep + list(new_hashes), dtype=str)
        values = new_rows if not keep else np.concatenate([stored[[index[h] for h in keep]], new_rows])
        with self.lock():
            atomic_write(path, lambda f: np.savez(f, hashes=hashes, values=values))
            settings_file = path.with_suffix(".json")
            if not settings_file.is_file():
                atomic_write_bytes(settings_file, json.dumps({"kind": kind, "settings": settings},
                                                             sort_keys=True, indent=1, default=str).encode())

    def lookup(self, kind, settings, hashes, compute):
        """Rows for ``hashes`` (list of str; '' = a zero row); ``compute(positions) -> rows`` runs once
        for one position per distinct missing hash. Returns ``(rows or None, n_computed)``."""
        rows, missing = self.fetch(kind, settings, hashes)
        if not missing:
            return rows, 0
        computed = np.asarray(compute(np.asarray(missing, dtype=np.int64)))
        if len(computed) != len(missing):
            raise ValueError(f"cache '{kind}': compute returned {len(computed)} rows for {len(missing)} items")
        if rows is None or rows.shape[1:] != computed.shape[1:] or rows.dtype != computed.dtype:
            if rows is not None:  # stored entries of another shape are stale: recompute them all
                return self._recompute_all(kind, settings, hashes, compute)
            rows = np.zeros((len(hashes), *computed.shape[1:]), dtype=computed.dtype)
        self.put(kind, settings, [hashes[p] for p in missing], computed)
        by_hash = {hashes[p]: computed[k] for k, p in enumerate(missing)}
        for pos, h in enumerate(hashes):
            if h in by_hash:
                rows[pos] = by_hash[h]
        return rows, len(missing)

    def _recompute_all(self, kind, settings, hashes, compute):
        with self.lock():
            self.file(kind, settings).unlink(missing_ok=True)
        return self.lookup(kind, settings, hashes, compute)

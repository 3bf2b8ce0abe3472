"""A disk cache of per-item arrays keyed by image content hash and settings.

One file per ``(kind, settings)``: ``<root>/<kind>/<digest of settings>.rows``, two ``.npy`` arrays back to back:
the content hashes it knows, then one row per hash. Readers memory-map the rows read-only (:class:`CachedRows`):
a catalogue's pixels or image tokens are read on demand, never copied whole into a process's memory. A lookup
computes only the missing entries, so a changed image (new hash) or a changed setting (new file) invalidates
exactly its entries. Files are written to a temporary name in the same folder and renamed into place (a map keeps
the file it opened), so a crash never leaves half a cache file; a cache file that cannot be read is ignored and
rebuilt. Writes hold ``lock`` (the dataset folder's shared lock), so a dataset rebuild never swaps the folder from
under a cache write, and the file's own exclusive lock, so concurrent writers never drop each other's entries.
"""
import contextlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from recbole_gen.files import array_bytes, atomic_write, atomic_write_bytes, digest, folder_lock
from recbole_gen.ranks import barrier, broadcast_from_rank0, rank_and_world

logger = logging.getLogger(__name__)

WRITE_CHUNK_BYTES = 64 << 20  # stored rows are copied into a rewritten file this much at a time


class CachedRows:
    """Rows of a cache file in the caller's order, read on demand from a read-only memory map.

    ``rows[ids]`` (an index array, a boolean mask or a slice) reads just those rows, zeros where an item has no
    entry; ``np.asarray(rows)`` reads them all. Copies share the map: it is read-only.
    """

    def __init__(self, values, positions):
        self.values = values
        self.positions = np.asarray(positions, dtype=np.int64)

    @property
    def shape(self):
        return (len(self.positions), *self.values.shape[1:])

    @property
    def dtype(self):
        return self.values.dtype

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, index):
        positions = self.positions[index]
        out = np.zeros((*positions.shape, *self.values.shape[1:]), dtype=self.values.dtype)
        found = positions >= 0
        out[found] = self.values[positions[found]]
        return out

    def __array__(self, dtype=None, copy=None):
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)

    def select(self, index):
        """The rows ``index`` (in that order) as another view of the same map."""
        return CachedRows(self.values, self.positions[index])

    def __deepcopy__(self, memo):
        return self


def _hash_array(hashes):
    return np.array(list(hashes), dtype="S")


def _find(stored, wanted):
    """Position in ``stored`` of each of ``wanted`` (byte-string arrays), -1 where absent or ''."""
    if len(stored) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    order = np.argsort(stored, kind="stable")
    ordered = stored[order]
    at = np.searchsorted(ordered, wanted).clip(max=len(stored) - 1)
    return np.where((ordered[at] == wanted) & (wanted != b""), order[at], -1)


def _read(path):
    """``(hashes, read-only map of the rows)`` of a cache file."""
    with open(path, "rb") as f:
        hashes = np.load(f, allow_pickle=False)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    if fortran_order or len(hashes) != shape[0] or shape[0] == 0:
        raise ValueError(f"{len(hashes)} hashes for rows of shape {shape}")
    return hashes, np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _write(f, hashes, parts, row_shape, dtype):
    """The hashes, then the rows of ``parts`` (``(array or map, row positions or None)``) a chunk at a time."""
    np.save(f, _hash_array(hashes), allow_pickle=False)
    np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                             "shape": (len(hashes), *row_shape)})
    chunk = max(1, WRITE_CHUNK_BYTES // max(1, int(np.prod(row_shape)) * dtype.itemsize))
    for values, positions in parts:
        count = len(values) if positions is None else len(positions)
        for start in range(0, count, chunk):
            rows = values[start:start + chunk] if positions is None else values[positions[start:start + chunk]]
            f.write(np.ascontiguousarray(rows, dtype=dtype).tobytes())


class FeatureCache:
    """Content-addressed rows on disk: ``lookup(kind, settings, hashes, compute)``."""

    def __init__(self, root, lock=contextlib.nullcontext):
        self.root = Path(root)
        self.lock = lock

    def file(self, kind, settings):
        return self.root / kind / f"{digest(settings, 20)}.rows"

    def _load(self, path):
        """``(hashes, values)`` of a cache file; ``(empty, None)`` when it is absent or unreadable."""
        if path.is_file():
            try:
                return _read(path)
            except Exception as error:  # a damaged cache file is rebuilt, never trusted
                logger.warning(f"ignoring unreadable cache file {path}: {error}")
        return _hash_array([]), None

    def missing(self, kind, settings, hashes):
        """Positions (the first of each distinct hash) of the ``hashes`` without a stored entry ('' needs none)."""
        stored, _ = self._load(self.file(kind, settings))
        wanted = _hash_array(hashes)
        absent = np.flatnonzero((_find(stored, wanted) < 0) & (wanted != b""))
        _, first = np.unique(wanted[absent], return_index=True)
        return np.sort(absent[first])

    def rows(self, kind, settings, hashes):
        """The stored rows of ``hashes`` as :class:`CachedRows` (zeros for '' and unknown hashes); None without a file."""
        stored, values = self._load(self.file(kind, settings))
        return None if values is None else CachedRows(values, _find(stored, _hash_array(hashes)))

    def put(self, kind, settings, new_hashes, new_rows):
        """Add entries (merged with what is stored; same-shaped rows only) with an atomic rewrite."""
        new_rows = np.asarray(new_rows)
        if len(new_hashes) == 0:
            return
        path = self.file(kind, settings)
        with self.lock(), folder_lock(path, shared=False):
            stored, values = self._load(path)
            if values is not None and (values.shape[1:] != new_rows.shape[1:] or values.dtype != new_rows.dtype):
                logger.info(f"cache '{kind}': stored rows have another shape/dtype; replacing them")
                stored, values = _hash_array([]), None
            keep = np.flatnonzero(~np.isin(stored, _hash_array(new_hashes)))
            parts = [(new_rows, None)] if values is None else [(values, keep), (new_rows, None)]
            atomic_write(path, lambda f: _write(f, [*stored[keep].tolist(), *_hash_array(new_hashes).tolist()], parts,
                                                new_rows.shape[1:], new_rows.dtype),
                         size=(len(keep) + len(new_rows)) * new_rows[0].nbytes)
            settings_file = path.with_suffix(".json")
            if not settings_file.is_file():
                atomic_write_bytes(settings_file, json.dumps({"kind": kind, "settings": settings},
                                                             sort_keys=True, indent=1, default=str).encode())

    def lookup(self, kind, settings, hashes, compute, shared=False):
        """Rows for ``hashes`` (list of str; '' = a zero row) as :class:`CachedRows`; ``compute(positions) -> rows``
        runs for one position per distinct missing hash (again for the rest when a stale file of another row shape
        is replaced). ``shared``: every rank calls this together and ``compute`` is a collective over them
        (:func:`recbole_gen.ranks.split_over_ranks`): all compute rank 0's missing rows, rank 0 alone writes them,
        the others read them after. Returns ``(rows or None, n_computed)``."""
        computed_count = 0
        for _ in range(3):
            missing = self.missing(kind, settings, hashes)
            if shared:
                missing = broadcast_from_rank0(missing)
            if len(missing) == 0:
                return self.rows(kind, settings, hashes), computed_count
            computed = np.asarray(compute(missing))
            if len(computed) != len(missing):
                raise ValueError(f"cache '{kind}': compute returned {len(computed)} rows for {len(missing)} items")
            if not shared or rank_and_world()[0] == 0:
                self.put(kind, settings, [hashes[p] for p in missing], computed)
            if shared:
                barrier()
            computed_count += len(missing)
        raise RuntimeError(f"cache '{kind}': {self.file(kind, settings)} keeps losing entries as they are written")


class ArtifactCache:
    """``load_or_build(prefix, key, build, what)`` over a folder of ``.pt`` + ``.json`` pairs: whole derived
    artifacts (GenLMM's tokenizer and pre-training, the FD projection of a catalogue), not per-item rows."""

    def __init__(self, folder, lock):
        self.folder, self.lock = Path(folder), lock

    def load_or_build(self, prefix, key, build, what):
        """``(state_dict, info)`` of artifact ``key`` (``prefix`` may name a subfolder), from disk or from
        ``build() -> (state_dict, info)`` now. One process builds it; another that asks meanwhile (a benchmark's
        concurrent rows) waits on the artifact's own lock and then loads it."""
        weights, meta = self.folder / f"{prefix}-{key}.pt", self.folder / f"{prefix}-{key}.json"
        loaded = self._load(weights, meta, what)
        if loaded is not None:
            return loaded
        with folder_lock(weights, shared=False):
            loaded = self._load(weights, meta, what)
            if loaded is not None:
                return loaded
            logger.info(f"building {what} (cached as {weights})")
            start = time.time()
            state, info = build()
            info = {"key": key, **info, "build_seconds": round(time.time() - start, 1)}
            state = {k: v.detach().cpu() for k, v in state.items()}
            with self.lock():
                atomic_write(weights, lambda f: torch.save(state, f), size=array_bytes(state))
                atomic_write_bytes(meta, json.dumps(info, indent=1, default=str).encode())
        return state, info

    @staticmethod
    def _load(weights, meta, what):
        if not (weights.is_file() and meta.is_file()):
            return None
        try:
            return torch.load(weights, map_location="cpu", weights_only=True), json.loads(meta.read_text())
        except Exception as error:  # a damaged artifact is rebuilt, never trusted
            logger.warning(f"ignoring the unreadable cached file {weights} ({what}; {type(error).__name__}: "
                           f"{str(error).splitlines()[0]}); rebuilding it")
            return None

"""FAISS index over the catalogue's image embeddings (inner product = cosine: rows are L2-normalised).

Kinds (``eval_index``; measured recall and speed in docs/scale.md), each a FAISS index-factory string:

* ``flat``: ``Flat``, exact, no training.
* ``hnsw``: ``HNSW<m>,Flat``, a graph over the items (``eval_index_hnsw_m`` links per node,
  ``eval_index_ef_construction`` / ``eval_index_ef_search`` candidates while building / per query).
* ``ivf``: ``IVF<nlist>,Flat``, k-means cells (``eval_index_nlist``, ~ = ``eval_index_nlist_factor`` x
  sqrt(items)); a query visits ``eval_index_nprobe`` cells.
* ``ivf_hnsw``: ``IVF<nlist>_HNSW<m>,Flat``, the same with an HNSW graph finding the cells
  (``eval_index_quantizer_ef_search``): many cells stay fast.
* ``ivf_pq``: ``IVF<nlist>_HNSW<m>,PQ<dim/pq_dims>x<pq_bits>np``, compressed codes; each query's best
  ``k x eval_index_pq_rerank`` candidates are re-scored exactly.
* ``auto``: by the number of valid items (:func:`auto_kind`, ``eval_index_auto_limits``): flat, then ivf,
  ivf_hnsw, ivf_pq as the catalogue grows.

An approximate index may miss items (:meth:`CatalogueIndex.recall_vs_exact` measures how many); the scores it
returns are exact cosines of the items it finds. HNSW graphs are built on several threads, so an index with a
graph can differ slightly from one build to the next.

Item ids are RecBole's internal ids (rows of the embedding matrix). Row 0 (padding) and items
marked invalid (no image) are not in the index: :meth:`search` never returns them and
:meth:`full_scores` gives them ``-inf``. When fewer than ``k`` items are found, the missing result
slots hold id ``-1`` and score ``-inf``.

Ties: :meth:`search` returns equal scores in FAISS's order (for the flat index, lower item id
first in practice, not guaranteed); :meth:`full_scores` leaves the order to whoever ranks the row
(RecBole: ``torch.topk``, implementation-defined). Pixel-identical catalogue items have identical
scores, so which of them is "hit" is arbitrary; similarity metrics (TargetSim...) treat them as the
same answer.
"""
import hashlib
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from recbole_gen.config import ConfigError, Settings
from recbole_gen.files import digest

KINDS = ("flat", "hnsw", "ivf", "ivf_hnsw", "ivf_pq")
AUTO_KINDS = ("flat", "ivf", "ivf_hnsw", "ivf_pq")  # what ``auto`` picks, smallest catalogue first
POINTS_PER_CELL = 39  # FAISS's k-means wants this many training points per cell (it warns below)


class EmptyCatalogueError(ValueError):
    """No item of the catalogue has an embedding."""


@dataclass(frozen=True)
class IndexSettings(Settings):
    """The catalogue index's keys (defaults and meaning: properties/overall.yaml; choosing them: docs/scale.md)."""

    eval_index: str
    eval_index_auto_limits: list
    eval_index_hnsw_m: int
    eval_index_ef_construction: int
    eval_index_ef_search: int
    eval_index_nlist: Optional[int]
    eval_index_nlist_factor: float
    eval_index_nprobe: int
    eval_index_quantizer_ef_search: int
    eval_index_pq_dims: int
    eval_index_pq_bits: int
    eval_index_pq_rerank: int

    def check(self):
        self.require(self.eval_index in (*KINDS, "auto"), "eval_index", f"one of {', '.join(KINDS)} or auto")
        limits = self.eval_index_auto_limits
        self.require(len(limits) == len(AUTO_KINDS) - 1 and all(int(a) < int(b) for a, b in zip(limits, limits[1:])),
                     "eval_index_auto_limits", f"{len(AUTO_KINDS) - 1} increasing item counts "
                     f"(where {', '.join(AUTO_KINDS[1:])} take over)")
        for key in ("eval_index_hnsw_m", "eval_index_ef_construction", "eval_index_ef_search", "eval_index_nprobe",
                    "eval_index_quantizer_ef_search", "eval_index_pq_dims", "eval_index_pq_bits", "eval_index_pq_rerank"):
            self.require(getattr(self, key) >= 1, key, ">= 1")
        self.require(self.eval_index_nlist is None or self.eval_index_nlist >= 1, "eval_index_nlist", "~ or >= 1")
        self.require(self.eval_index_nlist_factor > 0, "eval_index_nlist_factor", "> 0")


def resolved_kind(settings, num_items):
    """The index kind ``settings`` give a catalogue of ``num_items`` (``auto`` resolved; no settings: flat)."""
    if settings is None:
        return "flat"
    return auto_kind(num_items, settings.eval_index_auto_limits) if settings.eval_index == "auto" else settings.eval_index


def auto_kind(num_items, limits):
    """The kind ``eval_index: auto`` picks for ``num_items`` items: flat below ``limits[0]``, ivf below ``limits[1]``,
    ivf_hnsw below ``limits[2]``, ivf_pq from there on."""
    for kind, limit in zip(AUTO_KINDS, limits):
        if num_items < int(limit):
            return kind
    return AUTO_KINDS[-1]


def factory_string(kind, dim, num_items, settings):
    """``(index-factory string, search parameters)`` of ``kind`` for ``num_items`` vectors of ``dim`` floats."""
    s = settings
    if kind == "flat":
        return "Flat", ""
    if kind == "hnsw":
        return f"HNSW{s.eval_index_hnsw_m},Flat", f"efSearch={s.eval_index_ef_search}"
    if s.eval_index_nlist:
        nlist = min(s.eval_index_nlist, num_items)
    else:
        nlist = min(round(s.eval_index_nlist_factor * math.sqrt(num_items)), num_items // POINTS_PER_CELL)
    coarse = f"IVF{max(1, nlist)}" + ("" if kind == "ivf" else f"_HNSW{s.eval_index_hnsw_m}")
    params = f"nprobe={s.eval_index_nprobe}" + ("" if kind == "ivf" else f",quantizer_efSearch={s.eval_index_quantizer_ef_search}")
    if kind != "ivf_pq":
        return f"{coarse},Flat", params
    if dim % s.eval_index_pq_dims:
        raise ConfigError(f"eval_index_pq_dims must divide the embedding dimension {dim}, got {s.eval_index_pq_dims}")
    if num_items < 2 ** s.eval_index_pq_bits:
        raise ConfigError(f"eval_index: ivf_pq with eval_index_pq_bits {s.eval_index_pq_bits} needs at least "
                          f"{2 ** s.eval_index_pq_bits} items to train its codebooks, the catalogue has {num_items}")
    return f"{coarse},PQ{dim // s.eval_index_pq_dims}x{s.eval_index_pq_bits}np", params  # np: no polysemous training


def _as_float32(array, what):
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().float().numpy()
    array = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-d [rows, dim] array, got shape {array.shape}")
    return array


def as_catalogue_index(obj):
    """A :class:`CatalogueIndex`, or the ``.index`` of an ``ImageCatalogue``."""
    if isinstance(obj, CatalogueIndex):
        return obj
    inner = getattr(obj, "index", None)
    if isinstance(inner, CatalogueIndex):
        return inner
    raise TypeError(f"expected a CatalogueIndex or an ImageCatalogue, got {type(obj).__name__}")


class CatalogueIndex:
    """Nearest catalogue items of query embeddings.

    Args:
        embeddings: ``[item_num, D]`` float (torch or numpy), L2-normalised rows; row 0 is padding.
        valid: optional bool ``[item_num]``: items that may be returned (default: every row but 0
            whose embedding is non-zero).
        settings: :class:`IndexSettings` (``IndexSettings.from_config(config)``), or None for the exact flat index.
        batch_size: queries per FAISS call.
    """

    def __init__(self, embeddings, valid=None, settings=None, batch_size=4096, faiss_index=None):
        """``faiss_index``: this index already built over these embeddings and settings (read from a cache)."""
        import faiss

        self.embeddings = _as_float32(embeddings, "catalogue embeddings")
        self.item_num, self.dim = self.embeddings.shape
        if valid is None:
            valid = np.linalg.norm(self.embeddings, axis=1) > 0
        valid = np.asarray(valid.cpu() if isinstance(valid, torch.Tensor) else valid, dtype=bool).copy()
        if valid.shape != (self.item_num,):
            raise ValueError(f"valid mask has shape {valid.shape}, expected ({self.item_num},)")
        if self.item_num:
            valid[0] = False  # padding item
        self.valid = valid
        self.ids = np.flatnonzero(valid).astype(np.int64)
        if len(self.ids) == 0:
            raise EmptyCatalogueError(
                f"the catalogue has no item with an image embedding ({self.item_num} rows, row 0 is padding): "
                "check that the dataset's item images were found"
            )
        self.batch_size = int(batch_size)
        self.kind = resolved_kind(settings, len(self.ids))
        self.spec, params = factory_string(self.kind, self.dim, len(self.ids), settings)
        self.rerank = settings.eval_index_pq_rerank if self.kind == "ivf_pq" else 1
        self.faiss_index = faiss_index
        if faiss_index is None:
            vectors = self.embeddings[self.ids]
            self.faiss_index = faiss.index_factory(self.dim, self.spec, faiss.METRIC_INNER_PRODUCT)
            if self.kind == "hnsw":
                self.faiss_index.hnsw.efConstruction = settings.eval_index_ef_construction
            if not self.faiss_index.is_trained:
                self.faiss_index.train(vectors)
            self.faiss_index.add(vectors)
        if params:
            faiss.ParameterSpace().set_index_parameters(self.faiss_index, params)

    @classmethod
    def from_settings(cls, embeddings, valid=None, config=None):
        """Build from the ``eval_index*`` keys of ``config`` (:class:`IndexSettings`); exact flat without a config."""
        return cls(embeddings, valid=valid, settings=None if config is None else IndexSettings.from_config(config))

    @classmethod
    def cached(cls, embeddings, valid, config, cache):
        """:meth:`from_settings` through an :class:`~recbole_gen.data.cache.ArtifactCache`: an index that is trained
        or built as a graph (every kind but ``flat``, minutes per million items) is built once for these embeddings
        and settings; later processes, benchmark rows and ranks read it (and all search the same graph)."""
        import faiss

        settings = None if config is None else IndexSettings.from_config(config)
        valid = np.asarray(valid.cpu() if isinstance(valid, torch.Tensor) else valid, dtype=bool)
        count = int(valid[1:].sum())
        kind = resolved_kind(settings, count)
        if kind == "flat":
            return cls(embeddings, valid=valid, settings=settings)
        vectors = _as_float32(embeddings, "catalogue embeddings")
        key = digest({"embeddings": hashlib.sha1(memoryview(vectors)).hexdigest(), "valid": hashlib.sha1(valid).hexdigest(),
                      "settings": settings.as_dict()})

        def build():
            built = cls(vectors, valid=valid, settings=settings)
            return ({"index": torch.from_numpy(faiss.serialize_index(built.faiss_index))},
                    {"kind": built.kind, "spec": built.spec, "items": len(built)})

        state, _ = cache.load_or_build("faiss-index/index", key, build, f"the {kind} FAISS index of {count} catalogue items")
        return cls(vectors, valid=valid, settings=settings, faiss_index=faiss.deserialize_index(state["index"].numpy()))

    @property
    def exact(self):
        """Whether :meth:`search` finds the true nearest items (the flat index)."""
        return self.kind == "flat"

    def _queries(self, queries):
        queries = _as_float32(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(
                f"query embeddings have dimension {queries.shape[1]}, the catalogue index has {self.dim}: "
                "were they made by a different image encoder?"
            )
        return queries

    def search(self, queries, k):
        """Top-``k`` catalogue items per query: ``(scores FloatTensor[Q, k], item_ids LongTensor[Q, k])``."""
        queries = self._queries(queries)
        k = int(k)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        kk = min(k, len(self.ids))
        step = max(1, self.batch_size // self.rerank)
        for start in range(0, len(queries), step):
            batch = queries[start:start + step]
            found_scores, found = self.faiss_index.search(batch, min(kk * self.rerank, len(self.ids)))
            if self.rerank > 1:
                found_scores, found = self._rescore(batch, found, kk)
            ok = found >= 0
            scores[start:start + len(batch), :kk] = np.where(ok, found_scores, -np.inf)
            ids[start:start + len(batch), :kk] = np.where(ok, self.ids[np.clip(found, 0, None)], -1)
        return torch.from_numpy(scores), torch.from_numpy(ids)

    def _rescore(self, queries, found, k):
        """The best ``k`` of the candidates ``found`` (positions in the index, -1 = none) by exact cosine."""
        exact = np.einsum("qd,qcd->qc", queries, self.embeddings[self.ids[np.clip(found, 0, None)]])
        exact[found < 0] = -np.inf
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, best, 1), np.take_along_axis(found, best, 1)

    def full_scores(self, queries):
        """Exact cosine of every query to every item: ``FloatTensor[Q, item_num]``, ``-inf`` for
        padding and items without an embedding. Computed with torch (one matmul per batch)."""
        if isinstance(queries, torch.Tensor):
            device = queries.device
            q = queries.detach().float()
            if q.dim() != 2 or q.shape[1] != self.dim:
                self._queries(q.cpu())  # raises the shape / dimension error
        else:
            q = torch.from_numpy(self._queries(queries))
            device = q.device
        if not hasattr(self, "_torch_emb") or self._torch_emb.device != device:
            self._torch_emb = torch.from_numpy(self.embeddings).to(device)
            self._torch_invalid = torch.from_numpy(~self.valid).to(device)
        scores = q @ self._torch_emb.T
        return scores.masked_fill_(self._torch_invalid, float("-inf"))

    def recall_vs_exact(self, queries, k=10):
        """Fraction of the exact top-``k`` (flat index) that this index returns, averaged over queries."""
        queries = self._queries(queries)
        exact = CatalogueIndex(self.embeddings, valid=self.valid, batch_size=self.batch_size)
        _, truth = exact.search(queries, k)
        _, found = self.search(queries, k)
        truth, found = truth.numpy(), found.numpy()
        hits = sum(len(np.intersect1d(t[t >= 0], f[f >= 0])) for t, f in zip(truth, found))
        return hits / max(1, int((truth >= 0).sum()))

    def __len__(self):
        return len(self.ids)

    def __repr__(self):
        return f"CatalogueIndex(kind={self.kind}, {self.spec}, items={len(self.ids)}/{self.item_num}, dim={self.dim})"

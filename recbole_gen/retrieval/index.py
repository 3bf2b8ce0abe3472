"""FAISS index over the catalogue's image embeddings (inner product = cosine: rows are L2-normalised).

* ``kind='flat'`` (default): ``IndexFlatIP``, exact, no training.
* ``kind='hnsw'``: ``IndexHNSWFlat`` (inner product), approximate; ``hnsw_m`` links per node,
  ``ef_search`` candidates per query. ``kind='ivf'``: ``IndexIVFFlat`` (``nlist`` cells, ``nprobe``
  visited). Use :meth:`CatalogueIndex.recall_vs_exact` to measure what an approximate index loses.

Item ids are RecBole's internal ids (rows of the embedding matrix). Row 0 (padding) and items
marked invalid (no image) are not in the index: :meth:`search` never returns them and
:meth:`full_scores` gives them ``-inf``. When fewer than ``k`` items are valid, the missing result
slots hold id ``-1`` and score ``-inf``.

Ties: :meth:`search` returns equal scores in FAISS's order (for the flat index, lower item id
first in practice, not guaranteed); :meth:`full_scores` leaves the order to whoever ranks the row
(RecBole: ``torch.topk``, implementation-defined). Pixel-identical catalogue items have identical
scores, so which of them is "hit" is arbitrary; similarity metrics (TargetSim...) treat them as the
same answer.
"""
import numpy as np
import torch


class EmptyCatalogueError(ValueError):
    """No item of the catalogue has an embedding."""


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
        kind: ``'flat'`` (exact), ``'hnsw'`` or ``'ivf'``.
        batch_size: queries per FAISS call.
    """

    def __init__(self, embeddings, valid=None, kind="flat", batch_size=4096, hnsw_m=32, ef_search=64,
                 ef_construction=80, nlist=None, nprobe=8, seed=0):
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
        self.kind, self.batch_size = kind, int(batch_size)
        vectors = self.embeddings[self.ids]
        if kind == "flat":
            self.faiss_index = faiss.IndexFlatIP(self.dim)
        elif kind == "hnsw":
            self.faiss_index = faiss.IndexHNSWFlat(self.dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            self.faiss_index.hnsw.efConstruction = int(ef_construction)
            self.faiss_index.hnsw.efSearch = int(ef_search)
        elif kind == "ivf":
            nlist = int(nlist or max(1, min(4 * int(np.sqrt(len(vectors))), len(vectors) // 39 or 1)))
            quantizer = faiss.IndexFlatIP(self.dim)
            self.faiss_index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.faiss_index.cp.seed = int(seed)
            self.faiss_index.train(vectors)
            self.faiss_index.nprobe = int(nprobe)
            self._quantizer = quantizer  # keep alive
        else:
            raise ValueError(f"Unknown index kind '{kind}': use flat, hnsw or ivf")
        self.faiss_index.add(vectors)

    @classmethod
    def from_settings(cls, embeddings, valid=None, config=None):
        """Build from config keys ``eval_index`` (flat/hnsw/ivf), ``eval_index_hnsw_m``,
        ``eval_index_ef_search``, ``eval_index_nlist``, ``eval_index_nprobe``."""
        options = {}
        if config is not None:
            for key, option in [("eval_index", "kind"), ("eval_index_hnsw_m", "hnsw_m"),
                                ("eval_index_ef_search", "ef_search"), ("eval_index_nlist", "nlist"),
                                ("eval_index_nprobe", "nprobe")]:
                try:
                    value = config[key]
                except KeyError:
                    value = None
                if value is not None:
                    options[option] = value
        return cls(embeddings, valid=valid, **options)

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
        for start in range(0, len(queries), self.batch_size):
            batch = queries[start:start + self.batch_size]
            found_scores, found = self.faiss_index.search(batch, kk)
            ok = found >= 0
            scores[start:start + len(batch), :kk] = np.where(ok, found_scores, -np.inf)
            ids[start:start + len(batch), :kk] = np.where(ok, self.ids[np.clip(found, 0, None)], -1)
        return torch.from_numpy(scores), torch.from_numpy(ids)

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
        exact = CatalogueIndex(self.embeddings, valid=self.valid, kind="flat", batch_size=self.batch_size)
        _, truth = exact.search(queries, k)
        _, found = self.search(queries, k)
        truth, found = truth.numpy(), found.numpy()
        hits = sum(len(np.intersect1d(t[t >= 0], f[f >= 0])) for t, f in zip(truth, found))
        return hits / max(1, int((truth >= 0).sum()))

    def __len__(self):
        return len(self.ids)

    def __repr__(self):
        return f"CatalogueIndex(kind={self.kind}, items={len(self.ids)}/{self.item_num}, dim={self.dim})"

"""The catalogue as an encoder sees it: encoder + item embeddings + FAISS index, built once per process for a
(dataset, encoder) pair and shared by the evaluation, the RL rewards and the gallery.

Under several processes (``--nproc``) every rank builds it together: the items missing from the embedding cache are
encoded a share per rank and all-gathered (rank 0 writes them to the cache); then rank 0 builds the FAISS index and
the FD projection into the cache and the other ranks read them from there.
"""
import contextlib
import hashlib
import logging

import numpy as np
import torch

from recbole_gen.data.cache import ArtifactCache
from recbole_gen.ranks import rank0_first, split_over_ranks
from recbole_gen.retrieval.encoders import build_image_encoder_from_config
from recbole_gen.retrieval.index import CatalogueIndex, EmptyCatalogueError, IndexSettings

_CACHE = {}


class ImageCatalogue:
    """Embeddings of every catalogue item under one encoder, and an index over them.

    Attributes:
        encoder: the :class:`~recbole_gen.retrieval.encoders.ImageEncoder`.
        embeddings: ``FloatTensor[item_num, D]``; zeros for row 0 and items without an image.
        has_image: ``BoolTensor[item_num]``.
        index: :class:`~recbole_gen.retrieval.index.CatalogueIndex`.
        fd_projection: ``FloatTensor[D, d]`` or None: the catalogue's top-``d`` principal axes, onto
            which FD projects embeddings when ``D > eval_fd_dim``; with ``cache_dir`` saved there under the
            embeddings' digest and read back by later processes (every benchmark row and rank evaluates the same
            catalogue: the float64 SVD takes ~15 s for 3,655 x 3,072 on 2 cores).
    """

    def __init__(self, encoder, embeddings, has_image, index=None, fd_dim=256, cache_dir=None):
        self.encoder = encoder
        self.embeddings = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        self.has_image = torch.as_tensor(np.asarray(has_image), dtype=torch.bool)
        if self.embeddings.shape[0] != self.has_image.shape[0]:
            raise ValueError("embeddings and has_image disagree on the number of items")
        self.embeddings[~self.has_image] = 0
        if self.embeddings.shape[0]:
            self.embeddings[0] = 0
        self.index = index or CatalogueIndex(self.embeddings, valid=self.has_image)
        self.fd_projection = self._fd_projection(int(fd_dim), cache_dir) if fd_dim and self.dim > int(fd_dim) else None

    @property
    def dim(self):
        return self.embeddings.shape[1]

    @property
    def item_num(self):
        return self.embeddings.shape[0]

    @property
    def num_valid(self):
        return len(self.index)

    def _fd_projection(self, d, cache_dir):
        if cache_dir is None:
            return self._principal_axes(d)
        key = f"{hashlib.sha1(memoryview(np.ascontiguousarray(self.embeddings.numpy()))).hexdigest()[:20]}-{d}"
        state, _ = ArtifactCache(cache_dir, contextlib.nullcontext).load_or_build(
            "fd-axes/axes", key, lambda: ({"axes": self._principal_axes(d)}, {"items": self.num_valid}),
            f"the FD projection of {self.num_valid} catalogue items")
        return state["axes"]

    def _principal_axes(self, d):
        rows = self.embeddings[self.index.valid if isinstance(self.index.valid, torch.Tensor)
                               else torch.from_numpy(self.index.valid)].double()
        rows = rows - rows.mean(0)
        # right singular vectors of the centred catalogue: deterministic up to sign; fix the sign
        _, _, vt = torch.linalg.svd(rows, full_matrices=False)
        axes = vt[:d].T
        signs = torch.sign(axes.sum(0))
        signs[signs == 0] = 1
        return (axes * signs).float()

    def fd_features(self, embeddings):
        """Embeddings as FD sees them (projected onto ``fd_projection`` if any)."""
        x = embeddings.detach().float().cpu().reshape(-1, self.dim)
        return x if self.fd_projection is None else x @ self.fd_projection

    def encode(self, pixels):
        """Generated images ``FloatTensor[N, 3, H, W]`` in [0, 1] -> ``FloatTensor[N, D]`` in the
        catalogue's space (the same encoder)."""
        return self.encoder.encode(pixels)

    def describe(self):
        return f"{self.encoder.describe()}, {self.num_valid} catalogue items, {self.index.kind} index"

    @classmethod
    def from_pixels(cls, pixels, encoder, has_image=None, index_config=None, fd_dim=256):
        """Embed in-memory ``pixels`` ``[item_num, 3, S, S]`` (row 0 padding) with ``encoder`` (tests, benchmarks).
        A pixel encoder is fitted on the items with images first."""
        pixels = torch.as_tensor(pixels)
        if has_image is None:
            has_image = pixels.flatten(1).abs().sum(1) > 0 if pixels.shape[0] else torch.zeros(0, dtype=torch.bool)
        has_image = _without_padding(has_image, pixels.shape[0])
        ids = torch.nonzero(has_image).flatten()
        if hasattr(encoder, "fit") and encoder.mean is None:
            encoder.fit(pixels[ids])
        embeddings = np.zeros((pixels.shape[0], encoder.dim), dtype=np.float32)
        embeddings[ids.numpy()] = encoder.encode(pixels[ids]).cpu().numpy()
        return cls._indexed(encoder, embeddings, has_image, index_config, fd_dim)

    @classmethod
    def from_store(cls, store, encoder, index_config=None, fd_dim=256):
        """Embed a dataset's item image store a batch at a time (never all pixels as floats at once), through the
        store's per-item disk cache."""
        has_image = _without_padding(store.has_image, store.item_num)
        ids = torch.nonzero(has_image).flatten()
        if hasattr(encoder, "fit") and encoder.mean is None:
            encoder.fit(store.pixels(chunk) for chunk in torch.split(ids, 1024))
        encode = split_over_ranks(lambda _, pixels: encoder.encode(pixels).cpu().numpy())
        embeddings = np.asarray(store.cached(f"embeddings-{encoder.name}", encoder.settings(), encode, shared=True))
        return cls._indexed(encoder, embeddings, has_image, index_config, fd_dim, cache_dir=store.cache.root)

    @classmethod
    def _indexed(cls, encoder, embeddings, has_image, index_config, fd_dim, cache_dir=None):
        """The catalogue and its index over one float copy of the embeddings (rows without an image zeroed)."""
        embeddings = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        embeddings[~has_image] = 0
        if cache_dir is None:
            index = CatalogueIndex.from_settings(embeddings, valid=has_image, config=index_config)
            return cls(encoder, embeddings, has_image, index=index, fd_dim=fd_dim)
        with rank0_first():  # rank 0 builds the index and the FD projection into the cache, the others read them
            index = CatalogueIndex.cached(embeddings, has_image, index_config, ArtifactCache(cache_dir, contextlib.nullcontext))
            return cls(encoder, embeddings, has_image, index=index, fd_dim=fd_dim, cache_dir=cache_dir)

    @classmethod
    def from_config(cls, config, store, prefix="eval_encoder"):
        """The catalogue of ``store`` (a dataset's ``image_store``) under the encoder that config keys ``<prefix>...``
        name (the evaluation's, or ``rl_reward_encoder`` for rewards), embeddings cached on disk by the store,
        built once per process."""
        encoder = build_image_encoder_from_config(config, prefix)
        key = (str(store.folder), tuple(store.item_hashes), store.image_size, prefix, repr(sorted(
            (k, str(v)) for k, v in encoder.settings().items())) if encoder.name != "pixel" else "pixel",
            str(config[f"{prefix}_size"]), repr(IndexSettings.from_config(config).as_dict()))
        if key not in _CACHE:
            _CACHE[key] = cls.from_store(store, encoder, index_config=config, fd_dim=config["eval_fd_dim"])
            logging.getLogger().info(f"image catalogue ({prefix}): {_CACHE[key].describe()}")
        return _CACHE[key]


def _without_padding(has_image, item_num):
    has_image = torch.as_tensor(has_image, dtype=torch.bool).clone()
    if item_num:
        has_image[0] = False
    if not bool(has_image.any()):
        raise EmptyCatalogueError(f"the catalogue has no item image ({item_num} rows, row 0 is padding): "
                                  f"nothing to compare generated images with")
    return has_image


def clear_catalogue_cache():
    _CACHE.clear()

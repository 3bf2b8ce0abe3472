"""The catalogue as the evaluator sees it: encoder + item embeddings + FAISS index, built once per
process for a (dataset, encoder) pair and shared by the model (``full_sort_predict``) and the trainer.
"""
import logging

import numpy as np
import torch

from recbole_gen.evaluator.encoders import build_image_encoder_from_config
from recbole_gen.evaluator.index import CatalogueIndex, EmptyCatalogueError
from recbole_gen.utils import config_value

_CACHE = {}


class ImageCatalogue:
    """Embeddings of every catalogue item under one encoder, and an index over them.

    Attributes:
        encoder: the :class:`~recbole_gen.evaluator.encoders.ImageEncoder`.
        embeddings: ``FloatTensor[item_num, D]``; zeros for row 0 and items without an image.
        has_image: ``BoolTensor[item_num]``.
        index: :class:`~recbole_gen.evaluator.index.CatalogueIndex`.
        fd_projection: ``FloatTensor[D, d]`` or None: the catalogue's top-``d`` principal axes, onto
            which FD projects embeddings when ``D > eval_fd_dim``.
    """

    def __init__(self, encoder, embeddings, has_image, index=None, fd_dim=256):
        self.encoder = encoder
        self.embeddings = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        self.has_image = torch.as_tensor(np.asarray(has_image), dtype=torch.bool)
        if self.embeddings.shape[0] != self.has_image.shape[0]:
            raise ValueError("embeddings and has_image disagree on the number of items")
        self.embeddings[~self.has_image] = 0
        if self.embeddings.shape[0]:
            self.embeddings[0] = 0
        self.index = index or CatalogueIndex(self.embeddings, valid=self.has_image)
        self.fd_projection = self._principal_axes(int(fd_dim)) if fd_dim and self.dim > int(fd_dim) else None

    @property
    def dim(self):
        return self.embeddings.shape[1]

    @property
    def item_num(self):
        return self.embeddings.shape[0]

    @property
    def num_valid(self):
        return len(self.index)

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
    def from_pixels(cls, pixels, encoder, has_image=None, index_config=None, fd_dim=256, cached=None):
        """Embed ``pixels`` ``[item_num, 3, S, S]`` (row 0 padding) with ``encoder``.

        ``cached``: optional ``store.cached``-like callable ``(kind, settings, compute) -> array``.
        A pixel encoder is fitted on the items with images first.
        """
        pixels = torch.as_tensor(pixels)
        if has_image is None:
            has_image = pixels.flatten(1).abs().sum(1) > 0 if pixels.shape[0] else torch.zeros(0, dtype=torch.bool)
        has_image = torch.as_tensor(has_image, dtype=torch.bool).clone()
        if has_image.shape[0]:
            has_image[0] = False
        if not bool(has_image.any()):
            raise EmptyCatalogueError(
                f"the catalogue has no item image ({pixels.shape[0]} rows, row 0 is padding): nothing to evaluate against"
            )
        if hasattr(encoder, "fit") and getattr(encoder, "mean", None) is None:
            encoder.fit(pixels[has_image])

        def compute(item_indices, item_pixels):
            return encoder.encode(torch.as_tensor(item_pixels)).cpu().numpy()

        if cached is not None:
            settings = encoder.settings()
            embeddings = np.asarray(cached(f"embeddings-{encoder.name}", settings, compute))
        else:
            ids = torch.nonzero(has_image).flatten()
            embeddings = np.zeros((pixels.shape[0], encoder.dim), dtype=np.float32)
            embeddings[ids.numpy()] = compute(ids.numpy(), pixels[ids])
        index = CatalogueIndex.from_settings(
            torch.as_tensor(embeddings) * has_image.unsqueeze(1), valid=has_image, config=index_config
        )
        return cls(encoder, embeddings, has_image, index=index, fd_dim=fd_dim)

    @classmethod
    def from_config(cls, config, dataset, store=None):
        """The catalogue for ``dataset`` under the configured evaluation encoder (``eval_encoder``...),
        embeddings cached on disk by the dataset's item image store, built once per process."""
        if store is None:
            from recbole_gen.data.images import ItemImageStore

            store = ItemImageStore.from_dataset(config, dataset)
        encoder = build_image_encoder_from_config(config)
        pixels = store.pixels()
        has_image = torch.as_tensor(store.has_image, dtype=torch.bool)
        key = (
            str(config_value(config, "dataset")), str(config_value(config, "data_path")), tuple(pixels.shape),
            repr(sorted((k, str(v)) for k, v in encoder.settings().items())) if encoder.name != "pixel" else "pixel",
            str(config_value(config, "eval_encoder_size")), str(config_value(config, "eval_index", "flat")),
        )
        if key in _CACHE:
            return _CACHE[key]
        catalogue = cls.from_pixels(
            pixels, encoder, has_image=has_image, index_config=config,
            fd_dim=config_value(config, "eval_fd_dim", 256), cached=getattr(store, "cached", None),
        )
        logging.getLogger().info(f"image evaluation catalogue: {catalogue.describe()}")
        _CACHE[key] = catalogue
        return catalogue


def clear_catalogue_cache():
    _CACHE.clear()

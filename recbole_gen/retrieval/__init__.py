"""How images are compared: image encoders, the FAISS catalogue index, and a catalogue's embeddings.

Shared by the evaluation (metrics, ranking generated images) and by training signals that judge images
(the RL rewards), so it sits below both. The parts load on first use (no FAISS or open_clip import on
``import recbole_gen``):

    from recbole_gen.retrieval import build_image_encoder, CatalogueIndex, ImageCatalogue
"""
import importlib

_LAZY = {
    "ImageEncoder": "encoders", "build_image_encoder": "encoders", "build_image_encoder_from_config": "encoders",
    "EncoderWeightsError": "encoders",
    "CatalogueIndex": "index", "EmptyCatalogueError": "index", "as_catalogue_index": "index",
    "ImageCatalogue": "catalogue", "clear_catalogue_cache": "catalogue",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"recbole_gen.retrieval.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'recbole_gen.retrieval' has no attribute '{name}'")

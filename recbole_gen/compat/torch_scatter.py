"""The two ``torch_scatter`` reductions RecBole's KGIN and MCCLK import, on torch's own ``Tensor.scatter_reduce``.

``model/knowledge_aware_recommender/kgin.py`` 54 (``Aggregator.forward``: ``scatter_mean``) and ``mcclk.py`` 41
(``Aggregator.forward``: ``scatter_softmax``, ``scatter_mean``) import ``torch_scatter`` inside ``forward``; the
package builds against one torch version and has no wheel for current ones, so both models stopped with
``ModuleNotFoundError``. torch has had these reductions natively since 1.12. :func:`provide` registers this module as
``torch_scatter`` only when the package is not installed, and only when one of those models is looked up
(:func:`recbole_gen.utils.get_model`), so no other library mistakes it for the whole package. Same signatures and
results as torch_scatter 2.1 (an index without entries reduces to 0) for the arguments RecBole passes (no ``out``).
"""
import importlib.util
import sys

import torch

MODELS = ("KGIN", "MCCLK")


def _broadcast(index, src, dim):
    """``index`` expanded to ``src``'s shape along every dimension but ``dim`` (torch_scatter's ``broadcast``)."""
    dim = dim + src.dim() if dim < 0 else dim
    if index.dim() == 1:
        index = index.view([1] * dim + [-1])
    index = index.view(*index.shape, *[1] * (src.dim() - index.dim()))
    return index.expand(src.shape)


def _reduce(src, index, dim, dim_size, reduce):
    index = _broadcast(index, src, dim)
    size = list(src.shape)
    size[dim] = dim_size if dim_size is not None else int(index.max()) + 1 if index.numel() else 0
    return src.new_zeros(size).scatter_reduce(dim, index, src, reduce=reduce, include_self=False)


def scatter_mean(src, index, dim=-1, dim_size=None):
    return _reduce(src, index, dim, dim_size, "mean")


def scatter_softmax(src, index, dim=-1, dim_size=None):
    if not torch.is_floating_point(src):
        raise ValueError("`scatter_softmax` can only be computed over tensors with floating point data types.")
    full_index = _broadcast(index, src, dim)
    peak = _reduce(src.detach(), index, dim, dim_size, "amax").gather(dim, full_index)
    exp = (src - peak).exp()
    return exp / _reduce(exp, index, dim, dim_size, "sum").gather(dim, full_index)


def provide():
    """Make ``import torch_scatter`` find this module when the package is not installed."""
    if "torch_scatter" not in sys.modules and importlib.util.find_spec("torch_scatter") is None:
        sys.modules["torch_scatter"] = sys.modules[__name__]

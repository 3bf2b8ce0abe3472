"""recbole-gen: generative next-item recommendation as a RecBole extension.

Importing the package applies the compatibility patches that stock RecBole 1.2.1 needs on
today's numpy/pandas/torch/scipy (see :mod:`recbole_gen.compat`).
"""
from recbole_gen import compat

compat.apply()

from recbole_gen import evaluator  # noqa: E402  (registers the image metrics before any Config)

__version__ = "0.1.0"

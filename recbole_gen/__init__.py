"""recbole-gen: generative next-item recommendation as a RecBole extension.

Importing the package applies the compatibility patches that stock RecBole 1.2.1 needs on
today's numpy/pandas/torch/scipy (see :mod:`recbole_gen.compat`).
"""
import os

# idle OpenMP threads sleep instead of spinning, so a run beside another process slows down 1.5x, not 2.7x
# (benchmarks/threads/results.json); set OMP_WAIT_POLICY yourself to choose otherwise. Read when torch loads.
# The benchmark runner, whose rows run alone, spins unless the environment chose (comparison/runner.py).
OMP_WAIT_POLICY_FROM_ENVIRONMENT = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from recbole_gen import compat  # noqa: E402

compat.apply()

from recbole_gen import evaluator  # noqa: E402  (registers the image metrics before any Config)

__version__ = "0.1.0"

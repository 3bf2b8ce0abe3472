"""numpy 2 removed scalar aliases that RecBole 1.2.1 reads.

- ``recbole/config/configurator.py`` ``Config.compatibility_settings`` (lines 628-635) reads
  ``np.float_``, ``np.complex_`` and ``np.unicode_`` to re-create ``np.float`` & co.; with
  numpy 2 that raises ``AttributeError`` as soon as a ``Config`` is built.
- ``recbole/evaluator/metrics.py`` (lines 90-196) and ``recbole/data/interaction.py`` (line 31)
  then use ``np.float``, which ``compatibility_settings`` sets once the aliases exist.
- ``np.bool8`` is read by ray <= 2.6.3, which RecBole pins.
"""
import numpy as np

ALIASES = {
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "bool8": np.bool_,
}


def patch_numpy_aliases():
    for name, value in ALIASES.items():
        if not hasattr(np, name):
            setattr(np, name, value)

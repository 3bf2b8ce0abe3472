"""Patches that let stock RecBole 1.2.1 run on today's numpy, pandas, torch and scipy.

Each patch restores what RecBole meant on the library versions it was written for and
nothing more. ``apply()`` runs once, from ``import recbole_gen``, before anything from
RecBole is used; it is idempotent.

RecBole's ``recbole.quick_start`` imports ``ray.tune`` at module level (ray <= 2.6.3 needs
``pkg_resources`` and ``np.bool8``); this package never imports it and ships its own
``recbole_gen.quick_start`` instead, so ray is not needed at all.
"""
from recbole_gen.compat.anomaly_detection import patch_anomaly_detection
from recbole_gen.compat.ddp_cpu import patch_ddp_cpu
from recbole_gen.compat.numpy_aliases import patch_numpy_aliases
from recbole_gen.compat.pandas_cow import patch_pandas_copy_on_write
from recbole_gen.compat.scipy_dok import patch_scipy_dok_update
from recbole_gen.compat.torch_amp import patch_torch_amp
from recbole_gen.compat.torch_load import patch_torch_load

_applied = False


def apply():
    """Apply every patch once."""
    global _applied
    if _applied:
        return
    patch_numpy_aliases()
    patch_pandas_copy_on_write()
    patch_scipy_dok_update()
    patch_torch_load()
    patch_torch_amp()
    patch_ddp_cpu()
    patch_anomaly_detection()
    _applied = True


__all__ = ["apply"]

"""pandas 3 (copy-on-write) changed two idioms that ``recbole/data/dataset/dataset.py`` relies on.

1. ``df[field].fillna(..., inplace=True)`` now fills a temporary copy and leaves ``df`` as it was:
   - ``Dataset._load_feat`` line 501 leaves NaN in empty ``token_seq``/``float_seq`` cells, and
     the next line's ``.split`` fails on a float. Patched by filling those columns right after
     ``pd.read_csv`` returns, inside ``_load_feat``.
   - ``Dataset._fill_nan`` lines 648/650 leave NaN in token and float columns. Re-implemented
     with assignment (and ``np.float64`` for the removed ``np.float``).
2. ``Series.agg(len)`` now returns the length of the Series instead of each cell's length, so
   ``token_seq``/``float_seq`` fields break in ``Dataset._remap`` (line 1217), ``_normalize``
   (line 712) and ``_discretization`` (lines 792, 809). Patched by restoring the element-wise
   meaning of ``agg(len)`` while those methods run.
"""
import contextlib
import functools
import warnings

import numpy as np
import pandas as pd

from recbole.data.dataset import dataset as recbole_dataset
from recbole.utils import FeatureType


@contextlib.contextmanager
def _pandas2_semantics():
    """Within RecBole's dataset code only: ``agg(len)`` per cell, empty seq cells read as ''."""
    original_agg, original_read_csv = pd.Series.agg, pd.read_csv

    def agg(self, func=None, *args, **kwargs):
        if func is len:
            return self.map(len)
        return original_agg(self, func, *args, **kwargs)

    def read_csv(*args, **kwargs):
        df = original_read_csv(*args, **kwargs)
        for column in df.columns:
            if str(column).endswith("_seq"):  # RecBole headers are ``name:token_seq``
                df[column] = df[column].fillna("")
        return df

    pd.Series.agg, pd.read_csv = agg, read_csv
    try:
        with warnings.catch_warnings():  # line 501's no-op fillna warns; its work is done above
            warnings.simplefilter("ignore", pd.errors.ChainedAssignmentError)
            yield
    finally:
        pd.Series.agg, pd.read_csv = original_agg, original_read_csv


def _with_pandas2_semantics(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with _pandas2_semantics():
            return method(*args, **kwargs)

    wrapper.__recbole_gen_patched__ = True
    return wrapper


def _fill_nan(self):
    """``Dataset._fill_nan`` with assignment instead of ``inplace`` on a column copy."""
    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(
                    lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x
                )


def patch_pandas_copy_on_write():
    if int(pd.__version__.split(".")[0]) < 3:
        return
    cls = recbole_dataset.Dataset
    for name in ("_load_feat", "_remap", "_normalize", "_discretization"):
        method = getattr(cls, name)
        if not getattr(method, "__recbole_gen_patched__", False):
            setattr(cls, name, _with_pandas2_semantics(method))
    cls._fill_nan = _fill_nan

"""pandas 3 changed two idioms that RecBole 1.2.1's dataset classes rely on.

1. Copy-on-write: ``df[field].fillna(..., inplace=True)`` now fills a temporary copy and leaves
   ``df`` as it was:
   - ``Dataset._load_feat`` line 501 leaves NaN in empty ``token_seq``/``float_seq`` cells, and
     the next line's ``.split`` fails on a float. Patched by filling those columns right after
     ``pd.read_csv`` returns, inside ``_load_feat``.
   - ``Dataset._fill_nan`` lines 648/650 leave NaN in token and float columns. Re-implemented
     with assignment (and ``np.float64`` for the removed ``np.float``).
2. ``Series.agg(len)`` now returns the length of the Series; pandas 2 still computed it cell by
   cell (with a FutureWarning pointing to ``transform``), and that is what RecBole means. Patched
   by restoring the per-cell meaning of ``agg(len)`` while these methods run:
   - ``dataset.py`` ``Dataset._remap`` (line 1217), ``_normalize`` (712) and ``_discretization``
     (792, 809): ``token_seq``/``float_seq`` fields fail with a length mismatch;
   - ``sequential_dataset.py`` ``SequentialDataset._benchmark_presets`` (line 165): with
     ``benchmark_filename`` every pre-split sequence silently gets the number of rows as its
     ``item_length``;
   - ``kg_dataset.py`` ``KnowledgeBasedDataset._reset_ent_remapID`` (line 316): a ``token_seq``
     field in ``alias_of_item_id`` or ``alias_of_entity_id`` fails with a length mismatch.

``Series.agg(np.concatenate)``, used next to ``agg(len)``, means the same on both: pandas 2 fell
back to calling it on the whole Series, which pandas 3 does directly.
"""
import contextlib
import functools
import warnings

import numpy as np
import pandas as pd

from recbole.data.dataset import dataset as recbole_dataset
from recbole.data.dataset import kg_dataset, sequential_dataset
from recbole.utils import FeatureType


@contextlib.contextmanager
def _len_per_cell():
    """``Series.agg(len)`` as pandas 2 computed it: one length per cell."""
    original_agg = pd.Series.agg

    def agg(self, func=None, *args, **kwargs):
        if func is len:
            return self.map(len)
        return original_agg(self, func, *args, **kwargs)

    pd.Series.agg = agg
    try:
        yield
    finally:
        pd.Series.agg = original_agg


@contextlib.contextmanager
def _empty_seq_cells_read_as_empty_strings():
    """What ``_load_feat``'s ``fillna("", inplace=True)`` did before copy-on-write."""
    original_read_csv = pd.read_csv

    def read_csv(*args, **kwargs):
        df = original_read_csv(*args, **kwargs)
        for column in df.columns:
            if str(column).endswith("_seq"):  # RecBole headers are ``name:token_seq``
                df[column] = df[column].fillna("")
        return df

    pd.read_csv = read_csv
    try:
        with warnings.catch_warnings():  # line 501's no-op fillna warns; its work is done above
            warnings.simplefilter("ignore", pd.errors.ChainedAssignmentError)
            yield
    finally:
        pd.read_csv = original_read_csv


PATCHED_METHODS = (
    (recbole_dataset.Dataset, "_load_feat", _empty_seq_cells_read_as_empty_strings),
    (recbole_dataset.Dataset, "_remap", _len_per_cell),
    (recbole_dataset.Dataset, "_normalize", _len_per_cell),
    (recbole_dataset.Dataset, "_discretization", _len_per_cell),
    (sequential_dataset.SequentialDataset, "_benchmark_presets", _len_per_cell),
    (kg_dataset.KnowledgeBasedDataset, "_reset_ent_remapID", _len_per_cell),
)


def _run_within(context, method):
    """``method`` run inside ``context()``; marked, so that patching again does not wrap it twice."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with context():
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
    for cls, name, context in PATCHED_METHODS:
        method = getattr(cls, name)
        if not getattr(method, "__recbole_gen_patched__", False):
            setattr(cls, name, _run_within(context, method))
    recbole_dataset.Dataset._fill_nan = _fill_nan

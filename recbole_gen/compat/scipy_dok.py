"""scipy >= 1.13 dropped ``dok_matrix._update`` (a raw ``dict.update``).

RecBole's graph models build their adjacency with it: ``recbole/model/general_recommender/
lightgcn.py`` line 111 (also ngcf.py 110, ncl.py 131, gcmc.py 174, spectralcf.py 123,
knowledge_aware_recommender/kgin.py 356, mcclk.py 425). The shim restores the bulk update
on the matrix's key dictionary.
"""
import scipy.sparse as sp


def _update(self, data):
    self._dict.update(data)


def patch_scipy_dok_update():
    for cls in (sp.dok_matrix, getattr(sp, "dok_array", None)):
        if cls is not None and not hasattr(cls, "_update") and hasattr(cls(( 1, 1)), "_dict"):
            cls._update = _update

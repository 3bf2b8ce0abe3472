"""Interactions of an import as compact columns, and the filters applied to them.

Only (user, item, time[, rating]) is held, as integer codes and floats with each id string stored
once, as RecBole itself holds them; review texts never are. Every filter records what it dropped
and why, for manifest.json and the console report.
"""
import math
from array import array

import numpy as np
from tqdm import tqdm


class Interactions:
    """Collects interactions while a raw file streams by (:meth:`add`), then filters them in place."""

    def __init__(self, with_rating=False):
        self.with_rating = with_rating
        self._codes = {"user": {}, "item": {}}
        self._columns = {"user": array("q"), "item": array("q"), "time": array("d"), "rating": array("d")}
        self._arrays = None
        self.dropped = {}  # reason -> {"interactions": n, "users": n, "items": n}

    def add(self, user, item, seconds, rating=math.nan):
        for kind, token in (("user", user), ("item", item)):
            codes = self._codes[kind]
            self._columns[kind].append(codes.setdefault(token, len(codes)))
        self._columns["time"].append(seconds)
        if self.with_rating:
            self._columns["rating"].append(rating)

    # -- filters --------------------------------------------------------------------------

    def drop_duplicates(self):
        """Keep the first of interactions with the same user, item and timestamp (an exact duplicate);
        a repeat of an item at another time is a new interaction and stays."""
        user, item, time = self.column("user"), self.column("item"), self.column("time")
        order = np.lexsort((np.arange(len(user)), time, item, user))  # equal keys side by side, in input order
        u, i, t = user[order], item[order], time[order]
        same = np.zeros(len(order), dtype=bool)
        same[1:] = (u[1:] == u[:-1]) & (i[1:] == i[:-1]) & (t[1:] == t[:-1])
        keep = np.ones(len(order), dtype=bool)
        keep[order[same]] = False
        self._keep(keep, "duplicate (same user, item and timestamp)")

    def sample_users(self, n, seed):
        """Keep ``n`` users drawn with ``seed`` (the same input and seed give the same sample)."""
        users = np.unique(self.column("user"))
        if n >= len(users):
            return
        by_token = users[np.argsort(self._tokens("user")[users])]  # independent of the order users appear in
        chosen = np.random.default_rng(seed).choice(by_token, size=n, replace=False)
        self._keep(np.isin(self.column("user"), chosen), "user not in the --max-users sample")

    def k_core(self, k):
        """Drop users and items with fewer than ``k`` interactions, repeatedly, until every one has ``k``."""
        if k <= 1:
            return
        user, item = self.column("user"), self.column("item")
        keep = np.ones(len(user), dtype=bool)
        with tqdm(desc=f"{k}-core", unit=" rounds") as bar:
            while True:
                users = np.bincount(user[keep], minlength=len(self._codes["user"]))
                items = np.bincount(item[keep], minlength=len(self._codes["item"]))
                now = keep & (users[user] >= k) & (items[item] >= k)
                bar.update()
                if now.sum() == keep.sum():
                    break
                keep = now
        self._keep(keep, f"k-core (user or item with fewer than {k} interactions)")

    def drop_items(self, tokens, reason):
        codes = [self._codes["item"][t] for t in tokens if t in self._codes["item"]]
        self._keep(~np.isin(self.column("item"), codes), reason)

    # -- results --------------------------------------------------------------------------

    def __len__(self):
        return len(self.column("user"))

    def count(self, kind):
        """Distinct users or items left."""
        return len(np.unique(self.column(kind)))

    def item_tokens(self):
        return sorted(self._tokens("item")[np.unique(self.column("item"))])

    def rows(self):
        """``(user, item, seconds, rating)`` per interaction, by user id, then time, then input order."""
        user_tokens = self._tokens("user")
        user, item, time = self.column("user"), self.column("item"), self.column("time")
        rating = self.column("rating") if self.with_rating else np.full(len(user), math.nan)
        rank = np.empty(len(user_tokens), dtype=np.int64)
        rank[np.argsort(user_tokens)] = np.arange(len(user_tokens))
        item_tokens = self._tokens("item")
        for i in np.lexsort((np.arange(len(user)), time, rank[user])):
            yield user_tokens[user[i]], item_tokens[item[i]], float(time[i]), float(rating[i])

    def column(self, name):
        if self._arrays is None:  # the first filter or count ends the adding
            self._arrays = {key: np.frombuffer(values, dtype=values.typecode) for key, values in self._columns.items()}
        return self._arrays[name]

    def _tokens(self, kind):
        return np.array(list(self._codes[kind]), dtype=object)

    def _keep(self, mask, reason):
        before = {"interactions": len(mask), "users": self.count("user"), "items": self.count("item")}
        self._arrays = {name: values[mask] if len(values) else values for name, values in
                        {n: self.column(n) for n in self._columns}.items()}
        after = {"interactions": len(self), "users": self.count("user"), "items": self.count("item")}
        lost = {key: before[key] - after[key] for key in before}
        if lost["interactions"]:
            entry = self.dropped.setdefault(reason, {key: 0 for key in lost})
            for key, n in lost.items():
                entry[key] += n

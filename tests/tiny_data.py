"""A small RecBole dataset written as atomic files, with token_seq / float_seq item fields and
missing values, so tests exercise the dataset code paths that pandas 3 broke."""
from pathlib import Path

import numpy as np


def write_tiny_dataset(parent, name="tiny", n_users=40, n_items=30, length=12, seed=0):
    """Write ``parent/name/name.{inter,item}``; return the parent folder (RecBole's data_path)."""
    rng = np.random.default_rng(seed)
    folder = Path(parent) / name
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, n_users + 1):
        start = rng.integers(1, n_items + 1)
        for step in range(length):  # a walk through the catalogue: learnable next items
            item = (start + step + rng.integers(0, 2) - 1) % n_items + 1
            inter.append(f"u{user}\ti{item}\t{user * 1000 + step}")
    item = ["item_id:token\ttags:token_seq\tvec:float_seq\tprice:float"]
    for i in range(1, n_items + 1):
        tags = "" if i % 5 == 0 else f"t{i % 3} t{i % 4}"  # empty token_seq cells
        vec = "" if i % 7 == 0 else f"{i / 10} {i / 20}"  # empty float_seq cells
        price = "" if i % 6 == 0 else f"{i * 1.5}"  # missing float
        item.append(f"i{i}\t{tags}\t{vec}\t{price}")
    (folder / f"{name}.inter").write_text("\n".join(inter) + "\n")
    (folder / f"{name}.item").write_text("\n".join(item) + "\n")
    return Path(parent)

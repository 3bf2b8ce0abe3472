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


def write_tiny_knowledge(parent, name="tiny"):
    """Add a knowledge graph to ``parent/name`` (``.kg``: each item's two tags as relations; ``.link``: item ->
    entity), for RecBole's knowledge-aware models; returns the parent folder."""
    folder = Path(parent) / name
    items = [line.split("\t")[0] for line in (folder / f"{name}.item").read_text().splitlines()[1:]]
    kg = ["head_id:token\trelation_id:token\ttail_id:token"]
    kg += [f"e{item}\thas_tag\tt{int(item[1:]) % 3}" for item in items]
    kg += [f"e{item}\tin_group\tg{int(item[1:]) % 4}" for item in items]
    (folder / f"{name}.kg").write_text("\n".join(kg) + "\n")
    (folder / f"{name}.link").write_text("\n".join(["item_id:token\tentity_id:token", *(f"{i}\te{i}" for i in items)]) + "\n")
    return Path(parent)

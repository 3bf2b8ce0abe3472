"""Memory per catalogue item: what a process holds for the item images' pixels (the dataset's image store), for
the catalogue's image tokens (what GenLMM / GenDiff read them from) and for the evaluation's catalogue (embeddings and
FAISS index; the pixel encoder at 16 px: 768 floats per item), from a warm disk cache.

Rerun, after (this tree) and before (the commit before the change, exported beside it), each writing memory-<label>.json
next to this file:

    flock /tmp/recbole-gen-cpu.lock .venv/bin/python benchmarks/scale/memory_bench.py --label after
    mkdir -p /tmp/recbole-gen-before && git archive 3cb213c recbole_gen properties | tar -x -C /tmp/recbole-gen-before
    PYTHONPATH=/tmp/recbole-gen-before flock /tmp/recbole-gen-cpu.lock .venv/bin/python \
        benchmarks/scale/memory_bench.py --label before

A synthetic catalogue of ``--items`` PNG images is written once under ``--data``; each label gets its own cache
folder, filled by a first load; the measured load is the second one, in a fresh process, as every run after the
first sees it. Memory is the process's anonymous resident memory (``RssAnon``: what it alone holds) and its
file-backed resident pages (``RssFile``: page cache the kernel can drop and processes share), from
/proc/self/status, before and after. Before the change the store held every pixel (uint8) and the model an int32
token buffer filled from the cache's int64 rows; after, both are read-only memory maps of the cache, and the
catalogue and its index share one float copy of the embeddings (the flat FAISS index keeps its own).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import recbole_gen  # noqa: E402,F401
from recbole_gen.config import Config  # noqa: E402
from recbole_gen.data.images import ItemImageStore  # noqa: E402
from recbole_gen.model import vq as vqlib  # noqa: E402
from recbole_gen.retrieval.catalogue import ImageCatalogue  # noqa: E402

HERE = Path(__file__).resolve().parent


def code_measured():
    """Which recbole_gen was imported: this checkout's (relative), or the exported folder's name."""
    package = Path(recbole_gen.__file__).resolve().parent
    if package.is_relative_to(HERE.parents[1]):
        return str(package.relative_to(HERE.parents[1]))
    return f"{package.parent.name}/{package.name} (outside this checkout)"


TOKENS, CODEBOOK = 64, 1024  # an 8x8 token grid per image from a 1,024-code book (the tiny tokenizer has 4x4)


def memory():
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(status[key].split()[0]) * 1024 for key in ("RssAnon", "RssFile")}


def write_catalogue(folder, items, size, seed=0):
    """``items`` PNGs (a random 8x8 colour pattern each, drawn at ``size`` px) and a .inter file naming them."""
    if (folder / "done").is_file():
        return
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for item in range(1, items + 1):
        pattern = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pattern).resize((size, size), Image.NEAREST).save(folder / "images" / f"i{item}.png")
    lines = ["user_id:token\titem_id:token\ttimestamp:float", *(f"u{i % 100}\ti{i}\t{i}" for i in range(1, items + 1))]
    (folder / f"{folder.name}.inter").write_text("\n".join(lines) + "\n")
    (folder / "done").write_text("")


def tokens_table(store):
    """The catalogue's tokens as the model holds them (a stand-in tokenizer: the first channel on an 8x8 grid)."""
    step = store.image_size // 8

    def compute(_, pixels):
        tokens = (pixels[:, 0, ::step, ::step].flatten(1) * (CODEBOOK - 1)).round().long().numpy()
        return tokens.astype(vqlib.token_dtype(CODEBOOK)) if hasattr(vqlib, "ItemTokens") else tokens

    rows = store.cached("memory-bench-tokens", {"grid": 8}, compute)
    if hasattr(vqlib, "ItemTokens"):  # after: the cache's memory map, gathered per batch
        table = vqlib.ItemTokens(store.item_num, TOKENS, CODEBOOK, "benchmark")
        table.set(rows)
        return table, lambda items: table.of(items, items.device)
    buffer = torch.zeros(store.item_num, TOKENS, dtype=torch.int32)  # before: GenLMMCore's buffer, filled
    buffer.copy_(torch.as_tensor(rows).to(torch.int32))
    return buffer, lambda items: buffer[items].long()


def measure(config, tokens_list):
    """One load from the warm cache: memory growth of the store, then of the token table, and read times."""
    base = memory()
    store = ItemImageStore.from_tokens(config, tokens_list)
    after_store = memory()
    table, tokens_of = tokens_table(store)
    after_tokens = memory()
    catalogue = ImageCatalogue.from_config(config, store)
    after_catalogue = memory()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(1, store.item_num, (256,), generator=generator) for _ in range(40)]
    start = time.perf_counter()
    for items in batches:
        store.pixels(items)
    pixel_ms = (time.perf_counter() - start) / len(batches) * 1000
    start = time.perf_counter()
    for items in batches:
        tokens_of(items)
    token_ms = (time.perf_counter() - start) / len(batches) * 1000
    items = store.item_num - 1
    grow = lambda a, b, key: round((b[key] - a[key]) / items, 1)  # noqa: E731
    return {"items": items, "image_size": store.image_size, "tokens_per_item": TOKENS,
            "pixel_bytes_per_item": 3 * store.image_size ** 2,
            "store_anon_bytes_per_item": grow(base, after_store, "RssAnon"),
            "store_file_bytes_per_item": grow(base, after_store, "RssFile"),
            "tokens_anon_bytes_per_item": grow(after_store, after_tokens, "RssAnon"),
            "tokens_file_bytes_per_item": grow(after_store, after_tokens, "RssFile"),
            "embedding_dim": catalogue.dim, "index": catalogue.index.kind,
            "catalogue_anon_bytes_per_item": grow(after_tokens, after_catalogue, "RssAnon"),
            "anon_after_reads_bytes_per_item": grow(base, memory(), "RssAnon"),
            "ms_per_256_pixels": round(pixel_ms, 2), "ms_per_256_token_rows": round(token_ms, 3)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--data", default="/tmp/recbole-gen-memory-bench")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the fresh process
    args = parser.parse_args()
    name = f"catalogue{args.items}"
    folder = Path(args.data) / name
    config = Config(model="SASRec", dataset=name, config_dict={
        "data_path": str(folder.parent), "image_size": args.image_size, "image_field": "none", "item_text_field": "",
        "cache_dir": str(Path(args.data) / f"cache-{args.label}"), "load_col": {"inter": ["user_id", "item_id"]},
        "eval_encoder_size": 16, "eval_fd_dim": 1024})
    tokens_list = ["[PAD]", *(f"i{i}" for i in range(1, args.items + 1))]
    if args.measure:
        print(json.dumps(measure(config, tokens_list)))
        return
    write_catalogue(folder, args.items, args.image_size)
    measure(config, tokens_list)  # fills this label's cache
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    run = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--measure"], capture_output=True, text=True, check=True)
    result = {"label": args.label, "recbole_gen": code_measured(), "uptime": uptime,
              "command": " ".join(["benchmarks/scale/memory_bench.py", *sys.argv[1:]]),
              **json.loads(run.stdout.strip().splitlines()[-1])}
    (HERE / f"memory-{args.label}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""FAISS index choice at catalogue scale: recall@10 against the exact flat index and queries per second of every
``eval_index`` kind, built by ``CatalogueIndex`` with properties/overall.yaml's defaults (docs/scale.md).

Rerun (writes faiss.json next to this file; a few minutes per million items on 2 cores):

    flock /tmp/recbole-gen-cpu.lock .venv/bin/python benchmarks/scale/faiss_bench.py

The catalogue is synthetic, so that recall means something: ``--clusters`` Gaussian centres in ``--dim``
dimensions, each item a centre plus ``--spread`` times as much isotropic noise, L2-normalised; the queries are
held-out draws from the same mixture. ``--nprobe`` / ``--ef`` sweep one search setting of the built index
(FAISS's ParameterSpace) to show the trade-off behind the defaults. The HNSW rows repeat the committed evaluator
benchmark's hard case (10k random 512-d Gaussians, benchmarks/evaluator) with the old and the new defaults.
"""
import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import faiss  # noqa: E402
import numpy as np  # noqa: E402

import recbole_gen  # noqa: E402,F401
from recbole_gen.config import Config  # noqa: E402
from recbole_gen.retrieval.index import CatalogueIndex, IndexSettings  # noqa: E402

HERE = Path(__file__).resolve().parent


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def settings(**keys):
    """properties/overall.yaml's index defaults, then ``keys``."""
    return IndexSettings.from_config(Config(model="Pop", dataset="none", config_dict=keys))


def clustered(items, dim, clusters, spread, queries, seed=0):
    """``(catalogue [items + 1, dim] with row 0 padding, queries [queries, dim])``, rows L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, items + queries)]
    x += spread * rng.normal(size=x.shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.concatenate([np.zeros((1, dim), np.float32), x[:items]]), x[items:]


def measure(index, queries, truth, k=10):
    start = time.perf_counter()
    _, found = index.search(queries, k)
    seconds = time.perf_counter() - start
    found = found.numpy()
    recall = np.mean([len(np.intersect1d(t, f[f >= 0])) / k for t, f in zip(truth, found)])
    return {"recall@10": round(float(recall), 4), "qps": round(len(queries) / seconds), "load": os.getloadavg()[0]}


def run(name, emb, queries, truth, keys, sweep=()):
    start = time.perf_counter()
    index = CatalogueIndex(emb, settings=settings(**keys))
    build = time.perf_counter() - start
    row = {"name": name, "kind": index.kind, "factory": index.spec, "keys": keys, "build_s": round(build, 1),
           "index_bytes_per_item": round(faiss.serialize_index(index.faiss_index).nbytes / len(index), 1),
           **measure(index, queries, truth)}
    print(json.dumps(row), flush=True)
    rows = [row]
    for parameter, value in sweep:  # the same built index, one search setting changed
        faiss.ParameterSpace().set_index_parameters(index.faiss_index, f"{parameter}={value}")
        rows.append({"name": f"{name} {parameter}={value}", "kind": index.kind, "factory": index.spec,
                     "keys": keys, "search": f"{parameter}={value}", **measure(index, queries, truth)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=4096)
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--nprobe", type=int, nargs="*", default=[8, 16, 64, 128])
    parser.add_argument("--skip-hnsw", action="store_true")
    parser.add_argument("--out", default=str(HERE / "faiss.json"))
    args = parser.parse_args()
    started = uptime()
    emb, queries = clustered(args.items, args.dim, args.clusters, args.spread, args.queries)
    exact = CatalogueIndex(emb)
    _, truth = exact.search(queries, 10)
    truth = truth.numpy()
    rows = run("flat", emb, queries, truth, {"eval_index": "flat"})
    probes = [("nprobe", p) for p in args.nprobe]
    rows += run("ivf", emb, queries, truth, {"eval_index": "ivf"}, probes)
    rows += run("ivf_hnsw", emb, queries, truth, {"eval_index": "ivf_hnsw"}, probes)
    for kind in ("ivf", "ivf_hnsw"):  # 4x the cells: slower to build, and which finds the cells matters more
        rows += run(f"{kind}, 16 cells per sqrt(items)", emb, queries, truth,
                    {"eval_index": kind, "eval_index_nlist_factor": 16}, probes[-2:])
    rows += run("ivf_pq", emb, queries, truth, {"eval_index": "ivf_pq"})
    rows += run("ivf_pq without re-scoring", emb, queries, truth, {"eval_index": "ivf_pq", "eval_index_pq_rerank": 1})
    hard = []
    if not args.skip_hnsw:  # the evaluator benchmark's case: 10k random 512-d Gaussians
        rng = np.random.default_rng(0)
        emb512 = rng.normal(size=(10_001, 512)).astype(np.float32)
        emb512 /= np.linalg.norm(emb512, axis=1, keepdims=True)
        q512 = rng.normal(size=(1000, 512)).astype(np.float32)
        q512 /= np.linalg.norm(q512, axis=1, keepdims=True)
        _, truth512 = CatalogueIndex(emb512).search(q512, 10)
        old = {"eval_index": "hnsw", "eval_index_ef_construction": 80, "eval_index_ef_search": 64}
        hard += run("hnsw, old defaults (random 512-d)", emb512, q512, truth512.numpy(), old)
        hard += run("hnsw (random 512-d)", emb512, q512, truth512.numpy(), {"eval_index": "hnsw"},
                    [("efSearch", e) for e in (128, 512, 1024)])
        hard += run("flat (random 512-d)", emb512, q512, truth512.numpy(), {"eval_index": "flat"})
    out = {
        "command": "flock /tmp/recbole-gen-cpu.lock .venv/bin/python benchmarks/scale/faiss_bench.py "
                   + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("out", "nprobe", "skip_hnsw")),
        "data": {"items": args.items, "dim": args.dim, "clusters": args.clusters, "spread": args.spread,
                 "queries": args.queries, "k": 10},
        "machine": {"cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__,
                    "numpy": np.__version__, "python": platform.python_version()},
        "uptime_start": started, "uptime_end": uptime(), "rows": rows, "hnsw_random_512d_10k": hard,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

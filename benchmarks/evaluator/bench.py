"""Evaluator benchmark: self-retrieval per encoder/resolution, encoder throughput, FAISS vs numpy,
and the wall time of an image-metric evaluation of emoji-seq's test split.

Rerun (writes results.json and RESULTS.md next to this file):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/evaluator/bench.py

Single-threaded (torch and FAISS) so numbers are comparable on a shared machine; ``uptime`` load
is recorded next to every timing.
"""
import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import recbole_gen  # noqa: E402,F401
from recbole_gen.config import Config  # noqa: E402
from recbole_gen.retrieval.catalogue import ImageCatalogue  # noqa: E402
from recbole_gen.retrieval.encoders import build_image_encoder  # noqa: E402
from recbole_gen.retrieval.index import CatalogueIndex, IndexSettings  # noqa: E402

HERE = Path(__file__).resolve().parent


def load():
    return open("/proc/loadavg").read().split()[0]


def emoji_catalogue(px, limit=None):
    """[N+1, 3, px, px] in [0,1], row 0 padding; rendered from Noto Color Emoji."""
    from recbole_gen.data.emoji_seq import parse_emoji_test, render_emoji

    items = parse_emoji_test()
    if limit:  # a seeded random subset across all groups
        keep = np.sort(np.random.default_rng(0).choice(len(items), size=min(limit, len(items)), replace=False))
        items = [items[i] for i in keep]
    images = render_emoji([it["char"] for it in items], px)
    pixels = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255
    return torch.cat([torch.zeros(1, 3, px, px), pixels])


def degrade(pixels, how):
    """The 'reconstruction' of each image: blurN = N-times down- then up-sampling (bilinear,
    antialiased; a tokenizer's loss of fine detail); jpeg = JPEG quality 25."""
    if how.startswith("blur"):
        px, factor = pixels.shape[-1], int(how[4:])
        small = F.interpolate(pixels, size=(px // factor, px // factor), mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(small, size=(px, px), mode="bilinear", align_corners=False).clamp(0, 1)
    from PIL import Image

    out = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=25)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def self_retrieval(catalogue_pixels, recons, encoder):
    """Reconstruction -> original: Hit@1 / Hit@10 over items (pixel-identical items count as the same).
    ``recons``: {name: degraded pixels}; the catalogue is embedded once."""
    t0 = time.time()
    catalogue = ImageCatalogue.from_pixels(catalogue_pixels, encoder, fd_dim=0)
    flat = catalogue_pixels.flatten(1)
    _, group = np.unique((flat * 255).round().to(torch.uint8).numpy(), axis=0, return_inverse=True)
    group = torch.from_numpy(group.reshape(-1))
    truth = group[1:].unsqueeze(1)
    out = {}
    for how, recon in recons.items():
        _, found = catalogue.index.search(encoder.encode(recon[1:]), 10)
        same = (group[found.clamp(min=0)] == truth) & (found > 0)
        out[how] = {"hit@1": round(float(same[:, 0].float().mean()), 4), "hit@10": round(float(same.any(1).float().mean()), 4)}
    seconds = round(time.time() - t0, 1)
    return out, seconds


def throughput(name, options, size, n):
    encoder = build_image_encoder(name, **options)
    pixels = torch.rand(n, 3, size, size)
    if name == "pixel":
        encoder.fit(pixels)
    encoder.encode(pixels[:2])  # warm-up
    t0 = time.time()
    encoder.encode(pixels)
    seconds = time.time() - t0
    return {"images_per_s": round(n / seconds, 1), "n": n, "dim": encoder.dim, "load": load()}


def faiss_vs_numpy(items, dim=512, queries=1000, k=10, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(items + 1, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = rng.normal(size=(queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index = CatalogueIndex(emb)
    t0 = time.time()
    _, ids = index.search(q, k)
    t_faiss = time.time() - t0
    t0 = time.time()
    scores = q @ emb[1:].T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1) + 1
    t_numpy = time.time() - t0
    agree = float((np.sort(ids.numpy(), 1) == np.sort(top, 1)).all(1).mean())
    out = {"items": items, "dim": dim, "queries": queries, "k": k, "faiss_flat_s": round(t_faiss, 3),
           "numpy_s": round(t_numpy, 3), "numpy_over_faiss": round(t_numpy / t_faiss, 2), "same_topk": agree, "load": load()}
    if items > 20_000:  # building HNSW over 100k 512-d vectors takes minutes on one shared core
        return out
    t0 = time.time()
    hnsw = CatalogueIndex(emb, settings=IndexSettings.from_config(Config(model="Pop", dataset="none",
                                                                         config_dict={"eval_index": "hnsw"})))
    build = time.time() - t0
    t0 = time.time()
    hnsw.search(q, k)
    out.update({"hnsw_build_s": round(build, 2), "hnsw_search_s": round(time.time() - t0, 3),
                "hnsw_recall@10": round(hnsw.recall_vs_exact(q, k), 4)})
    return out


def emoji_seq_eval(models=("SASRec",)):
    """Wall time of one test-split evaluation of emoji-seq with every image metric (untrained models)."""
    from recbole.data import data_preparation
    from recbole.trainer import Trainer

    from recbole_gen.data import create_dataset
    from recbole_gen.retrieval.catalogue import clear_catalogue_cache
    from recbole_gen.trainer.evaluation import with_image_metrics
    from recbole_gen.utils import get_model

    data_path = os.environ.get("EMOJI_SEQ_DATA", str(Path(tempfile.gettempdir()) / "recbole_gen_bench_data"))
    out = []
    for model_name in models:
        clear_catalogue_cache()
        config = Config(model=model_name, dataset="emoji-seq", config_dict={
            "data_path": data_path, "device": "cpu", "show_progress": False,
            "metrics": ["Hit", "NDCG", "MRR", "TargetSim", "TargetSimBest", "HistorySim", "FutureSim", "Diversity",
                        "ImageCoverage", "Novelty", "FD", "OracleUtility"], "topk": [1, 10], "valid_metric": "MRR@10"})
        dataset = create_dataset(config)
        train, valid, test = data_preparation(config, dataset)
        model = get_model(model_name)(config, train._dataset)
        trainer = with_image_metrics(Trainer)(config, model)
        t0 = time.time()
        trainer.image_setup(test._dataset)
        setup_s = time.time() - t0
        t0 = time.time()
        result = trainer.evaluate(test, load_best_model=False)
        out.append({"model": f"{model_name} (untrained)", "users": len(test._dataset), "catalogue_setup_s": round(setup_s, 2),
                    "eval_s": round(time.time() - t0, 2), "encoder": trainer.image_catalogue.describe(),
                    "result": {k: float(v) for k, v in result.items()}, "load": load()})
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=None, help="a seeded random N of the emoji (default: all)")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to skip: retrieval throughput faiss emoji_seq")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import faiss

    faiss.omp_set_num_threads(1)
    results = {"command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/evaluator/bench.py " + " ".join(sys.argv[1:]),
               "machine": {"cpu_count": os.cpu_count(), "threads": 1, "python": platform.python_version(),
                           "torch": torch.__version__, "faiss": faiss.__version__,
                           "uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}}

    if "retrieval" not in args.skip:
        rows = []
        for px, settings in [(32, [("pixel", {}), ("pixel", {"size": 16}), ("efficientnet-lite0", {"size": 64}),
                                   ("efficientnet-lite0", {"size": 128}), ("efficientnet-lite0", {"size": 224}),
                                   ("random", {"size": 32, "dim": 64})]),
                             (64, [("pixel", {}), ("efficientnet-lite0", {"size": 224})])]:
            catalogue = emoji_catalogue(px, args.items)
            recons = {how: degrade(catalogue, how) for how in ("blur2", "blur4", "jpeg")}
            for name, options in settings:
                encoder = build_image_encoder(name, **options)
                scores, seconds = self_retrieval(catalogue, recons, encoder)
                for how, score in scores.items():
                    row = {"images_px": px, "reconstruction": how, "encoder": name, "encoder_px": encoder.size or px,
                           "items": catalogue.shape[0] - 1, **score, "seconds": seconds, "load": load()}
                    print(row, flush=True)
                    rows.append(row)
        results["self_retrieval"] = rows

    if "throughput" not in args.skip:
        rows = []
        for name, options, n in [("pixel", {}, 512), ("random", {}, 512), ("efficientnet-lite0", {}, 64),
                                 ("open_clip", {"path": "random", "model": "ViT-B-32"}, 32)]:
            for size in (64, 224):
                row = {"encoder": name, "px": size, **throughput(name, {**options, "size": size}, size, n)}
                print(row, flush=True)
                rows.append(row)
        results["throughput"] = rows

    if "faiss" not in args.skip:
        results["faiss_vs_numpy"] = []
        for items in (10_000, 100_000):
            row = faiss_vs_numpy(items)
            print(row, flush=True)
            results["faiss_vs_numpy"].append(row)

    if "emoji_seq" not in args.skip:
        try:
            results["emoji_seq_eval"] = emoji_seq_eval()
            print(results["emoji_seq_eval"], flush=True)
        except Exception as error:  # the dataset builder lives in recbole_gen.data; report, don't hide
            results["emoji_seq_eval"] = {"error": f"{type(error).__name__}: {error}"}
            print(results["emoji_seq_eval"], flush=True)

    results["machine"]["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (HERE / "RESULTS.md").write_text(markdown(results))


def markdown(r):
    lines = ["# Evaluator benchmark", "", f"Command: `{r['command']}`", "",
             f"Machine: {r['machine']['cpu_count']} CPUs (shared), 1 thread, torch {r['machine']['torch']}, "
             f"faiss {r['machine']['faiss']}. `uptime` at start: `{r['machine']['uptime_start']}`; "
             f"at end: `{r['machine']['uptime_end']}`. Column `load` = 1-min load average when the row finished.", ""]
    if "self_retrieval" in r:
        lines += ["## Self-retrieval (reconstruction -> original item)", "",
                  "Emoji catalogue (Noto Color Emoji, all fully-qualified emoji), each item's degraded copy searched "
                  "against the catalogue; pixel-identical font duplicates count as the same item. blur2 / blur4 = 2x / 4x "
                  "down- then up-sampling (bilinear); jpeg = JPEG quality 25.", "",
                  "| images px | reconstruction | encoder | encoder px | Hit@1 | Hit@10 | s | load |", "|---|---|---|---|---|---|---|---|"]
        for x in r["self_retrieval"]:
            lines.append(f"| {x['images_px']} | {x['reconstruction']} | {x['encoder']} | {x['encoder_px']} | {x['hit@1']} | "
                         f"{x['hit@10']} | {x['seconds']} | {x['load']} |")
        lines.append("")
    if "throughput" in r:
        lines += ["## Encoder throughput (1 thread, CPU)", "", "| encoder | px | images/s | dim | load |", "|---|---|---|---|---|"]
        for x in r["throughput"]:
            lines.append(f"| {x['encoder']} | {x['px']} | {x['images_per_s']} | {x['dim']} | {x['load']} |")
        lines += ["", "open_clip = ViT-B-32 with random weights (speed does not depend on the weights).", ""]
    if "faiss_vs_numpy" in r:
        lines += ["## FAISS vs numpy brute force (1000 queries, top-10, dim 512, 1 thread)", "",
                  "| items | FAISS flat s | numpy s | numpy/FAISS | same top-10 | HNSW build s | HNSW search s | HNSW recall@10 | load |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for x in r["faiss_vs_numpy"]:
            lines.append(f"| {x['items']} | {x['faiss_flat_s']} | {x['numpy_s']} | {x['numpy_over_faiss']} | {x['same_topk']} | "
                         f"{x.get('hnsw_build_s', '-')} | {x.get('hnsw_search_s', '-')} | {x.get('hnsw_recall@10', '-')} | {x['load']} |")
        lines.append("")
    if "emoji_seq_eval" in r:
        lines += ["## emoji-seq test split: evaluation wall time with every image metric", ""]
        if isinstance(r["emoji_seq_eval"], dict):
            lines.append(f"Not measured: {r['emoji_seq_eval']['error']}")
        else:
            for x in r["emoji_seq_eval"]:
                lines.append(f"- {x['model']}: {x['users']} test users, catalogue setup {x['catalogue_setup_s']} s, "
                             f"evaluate {x['eval_s']} s ({x['encoder']}; load {x['load']}). Result: `{x['result']}`")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

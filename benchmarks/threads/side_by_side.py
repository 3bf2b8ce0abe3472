"""Why the presets run two rows at a time (``jobs: 2``): a row's second thread against a second row.

    python benchmarks/threads/side_by_side.py --out benchmarks/threads/side_by_side.json

Two workloads of the main job, each in a fresh process: a ranker (SASRec at its row's settings: hidden 64, batch 256,
``--batches`` training batches on the main job's emoji-seq, dataset/benchmark/, built by ``make run`` or on first
use) and GenLMM's image tokenizer (``--vq-steps`` steps of its training on the same catalogue's images). Each runs
alone with 2 threads and with 1, then both at once with 1 thread each, as ``jobs: 2`` runs them on 2 cores. The
comparison is the wall time of the pair: one after the other at 2 threads (``jobs: 1``) against side by side.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def ranker(batches):
    import torch
    from recbole.data import data_preparation

    from recbole_gen.comparison import load_preset
    from recbole_gen.config import Config
    from recbole_gen.data import create_dataset
    from recbole_gen.utils import get_model

    preset = load_preset("default")
    row = {k: v for k, v in preset["rows"]["SASRec"].items() if k in ("hidden_size", "hidden_dropout_prob", "attn_dropout_prob")}
    config = Config(model="SASRec", dataset="emoji-seq", config_dict={
        **{k: preset["config"][k] for k in ("data_path", "emoji_seq_users", "MAX_ITEM_LIST_LENGTH")}, **row,
        "train_batch_size": 256, "show_progress": False, "seed": 0})
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("SASRec")(config, train_data._dataset)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    started, done = time.perf_counter(), 0
    while done < batches:
        for batch in train_data:
            loss = model.calculate_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == batches:
                break
    return time.perf_counter() - started


def tokenizer(steps):
    import torch
    from transformers import JanusVQVAE

    from recbole_gen.comparison import load_preset
    from recbole_gen.config import Config
    from recbole_gen.data import create_dataset
    from recbole_gen.data.images import resize
    from recbole_gen.model import vq as vqlib
    from recbole_gen.trainer.tokenizer import train_vq

    shared = load_preset("default")["config"]
    config = Config(model="TokenizerReconstruction", dataset="emoji-seq", config_dict={
        **{k: shared[k] for k in ("data_path", "emoji_seq_users")}, "show_progress": False})
    store = create_dataset(config, images=True).image_store
    architecture = vqlib.TokenizerArchitecture.from_config(config)
    pixels = resize(store.pixels(torch.nonzero(store.has_image).flatten()), architecture.lmm_image_size)
    vq = JanusVQVAE(vqlib.build_vq_config(architecture))
    started = time.perf_counter()
    train_vq(vq, pixels, steps, config["vq_batch_size"], config["vq_lr"], 0, log_every=0)
    return time.perf_counter() - started


WORKLOADS = {"ranker": ranker, "tokenizer": tokenizer}


def launch(workload, threads, size):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "ACTIVE"}
    return subprocess.Popen([sys.executable, __file__, "--worker", workload, "--size", str(size)], env=env,
                            stdout=subprocess.PIPE, text=True)


def seconds(process):
    out, _ = process.communicate()
    if process.returncode:
        raise RuntimeError(f"a worker failed (exit code {process.returncode})")
    return round(json.loads(out.strip().splitlines()[-1])["seconds"], 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/threads/side_by_side.json")
    parser.add_argument("--batches", type=int, default=200, help="SASRec training batches")
    parser.add_argument("--vq-steps", type=int, default=200, help="image tokenizer training steps")
    parser.add_argument("--worker", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps({"seconds": WORKLOADS[args.worker](args.size)}))
        return
    sizes = {"ranker": args.batches, "tokenizer": args.vq_steps}
    load = os.getloadavg()[0]
    alone = {(name, threads): seconds(launch(name, threads, size)) for threads in (2, 1) for name, size in sizes.items()}
    pair = {name: launch(name, 1, size) for name, size in sizes.items()}
    side_by_side = {name: seconds(process) for name, process in pair.items()}
    result = {"command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count(), "load_before": load,
              "load_after": os.getloadavg()[0], "sizes": sizes,
              "alone_2_threads_s": {name: alone[name, 2] for name in sizes},
              "alone_1_thread_s": {name: alone[name, 1] for name in sizes},
              "side_by_side_1_thread_each_s": side_by_side,
              "one_after_the_other_2_threads_s": round(sum(alone[name, 2] for name in sizes), 1),
              "side_by_side_s": max(side_by_side.values())}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""How a RecBole training step slows down when another process computes beside it, under each thread setting.

    python benchmarks/threads/contention.py --out benchmarks/threads/results.json

Workload: SASRec (RecBole's defaults: 2 layers, hidden 64, batch 2048, CE loss) training batches on the main job's
1,000-user emoji-seq (dataset/benchmark/, built by ``make run`` or on first use; nothing is downloaded),
timed over ``--batches`` batches after a warm-up, in a fresh process per setting (OpenMP reads its environment
once). Each setting runs alone, then beside ``--competitors`` single-threaded busy processes (a Python loop, like
another user's job). Settings: torch's default (2 OpenMP threads spinning while they wait), ``OMP_WAIT_POLICY=
PASSIVE`` (waiting threads sleep), and 1 thread.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "2 threads, OpenMP default (active wait)": ({}, 2),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2),
    "1 thread": ({}, 1),
}


def worker(threads, batches):
    """Seconds per training batch of SASRec on the main job's emoji-seq (run in a fresh process)."""
    import torch

    import recbole_gen  # noqa: F401
    from recbole.data import data_preparation
    from recbole_gen.config import Config
    from recbole_gen.data import create_dataset
    from recbole_gen.utils import get_model

    torch.set_num_threads(threads)
    from recbole_gen.comparison import load_preset

    shared = load_preset("default")["config"]
    config = Config(model="SASRec", dataset="emoji-seq", config_dict={
        "data_path": shared["data_path"], "emoji_seq_users": shared["emoji_seq_users"], "show_progress": False,
        "seed": 0, "MAX_ITEM_LIST_LENGTH": shared["MAX_ITEM_LIST_LENGTH"]})
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("SASRec")(config, train_data._dataset)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for i, batch in enumerate(train_data):
        started = time.perf_counter()
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - started)
        if len(times) == batches:
            break
    print(json.dumps({"seconds_per_batch": sum(times) / len(times), "batches": len(times)}))


def measure(env, threads, batches, competitors):
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(competitors)]
    try:
        time.sleep(1 if competitors else 0)
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, __file__, "--worker", str(threads), "--batches", str(batches)],
                             env={**os.environ, **env}, capture_output=True, text=True, check=True)
        return {**json.loads(out.stdout.strip().splitlines()[-1]), "load_before": load}
    finally:
        for process in busy:
            process.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/threads/results.json")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--competitors", type=int, default=1)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.batches)
    rows = []
    for name, (env, threads) in SETTINGS.items():
        alone = measure(env, threads, args.batches, 0)
        shared = measure(env, threads, args.batches, args.competitors)
        rows.append({"setting": name, "alone_s": round(alone["seconds_per_batch"], 3),
                     "beside_busy_s": round(shared["seconds_per_batch"], 3),
                     "slowdown": round(shared["seconds_per_batch"] / alone["seconds_per_batch"], 2),
                     "load_alone": alone["load_before"], "load_shared": shared["load_before"]})
        print(json.dumps(rows[-1]))
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "cpus": os.cpu_count(),
                                          "competitors": args.competitors, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

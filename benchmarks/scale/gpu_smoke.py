"""``run_recbole`` itself on a GPU: GenLMM's SFT (float32, then bf16 with gradient checkpointing), its RL stage from
that checkpoint, and SASRec, each trained and evaluated with the image metrics on a 64-emoji dataset. A smoke run of
the CUDA path of the real code (device placement, generation, the evaluator, checkpoints), not a measurement of
quality: the dataset and the budgets are tiny.

    python benchmarks/scale/gpu_smoke.py prepare --out .gpu          # here: the dataset (needs the emoji font)
    python benchmarks/scale/gpu_smoke.py run --data .gpu --out DIR   # on the GPU machine (default model sizes)
    python benchmarks/scale/gpu_smoke.py run --data .gpu --out DIR --tiny   # a quick CPU check of this script

The GPU machine this was written for has no RecBole, faiss or emoji font and an older transformers: the dataset is
prepared beside the code, the packages travel as wheels (benchmarks/scale/README.md has the commands).
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMON = dict(dataset="gtiny", image_dir="images", item_text_field="name", MAX_ITEM_LIST_LENGTH=10,
              load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
              vq_train_steps=200, pretrain_steps=200, epochs=3, max_train_minutes=1, eval_step=1, warmup_steps=5,
              log_every_steps=0, show_progress=False, seed=2020, topk=[10], valid_metric="NDCG@10")
IMAGE_METRICS = ["Hit", "NDCG", "TargetSim", "FD", "ImageCoverage", "Diversity", "Novelty"]


def prepare(out):
    """The 64-emoji dataset of the test suite (80 users x 8 interactions) under ``out/data``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_genlmm_support import emoji64, write_dataset

    data = write_dataset(Path(out) / "data", emoji64.__wrapped__())
    print(f"dataset written under {data}")


def run(data, out, tiny=False):
    import torch

    from recbole_gen.quick_start import run_recbole

    out = Path(out)
    folders = dict(data_path=str(Path(data) / "data"), cache_dir=str(out / "cache"), checkpoint_dir=str(out / "saved"),
                   log_dir=str(out / "log"))
    if tiny:  # the test suite's model sizes: a quick CPU check of this script
        sys.path.insert(0, str(ROOT / "tests"))
        from test_genlmm_support import TINY

        folders.update(TINY, vq_train_steps=20, pretrain_steps=10, max_train_minutes=0.2)
    runs = [("GenLMM fp32", "GenLMM", dict(metrics=IMAGE_METRICS)),
            ("GenLMM bf16 + gradient checkpointing", "GenLMM",
             dict(metrics=IMAGE_METRICS, dtype="bf16", gradient_checkpointing=True)),
            ("GenLMM RL (GRPO) from the fp32 SFT checkpoint", "GenLMM",
             dict(metrics=IMAGE_METRICS, stage="rl", rl_steps=10, rl_batch_size=8, rl_group_size=4, rl_eval_every=0,
                  rl_recommender_weight=0.0, init_from="@GenLMM fp32")),
            ("SASRec", "SASRec", dict(metrics=IMAGE_METRICS, epochs=5))]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (a check of this script)"
    report = {"device": device, "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "runs": []}
    files = {}
    for name, model, overrides in runs:
        overrides = {k: files[v[1:]] if isinstance(v, str) and v.startswith("@") else v for k, v in overrides.items()}
        started = time.perf_counter()
        entry = {"run": name}
        try:
            result = run_recbole(model=model, dataset="gtiny", config_dict={**COMMON, **folders, **overrides})
            files[name] = result["model_file"]
            entry.update(test={k: round(float(v), 4) for k, v in result["test_result"].items()},
                         epochs=result["epochs"], train_seconds=round(result["train_seconds"], 1),
                         test_seconds=round(result["test_seconds"], 1), model_file=Path(result["model_file"]).name)
        except Exception as error:  # report every run, then fail
            entry["error"] = f"{type(error).__name__}: {error}"
        entry["wall_seconds"] = round(time.perf_counter() - started, 1)
        report["runs"].append(entry)
        print(json.dumps(entry), flush=True)
        (out / "gpu_smoke.json").write_text(json.dumps(report, indent=1) + "\n")  # after each run: a time limit keeps it
    if any("error" in entry for entry in report["runs"]):
        raise SystemExit("some runs failed (see gpu_smoke.json)")


def command_line(description, prepare, run, data, tiny):
    """The two steps of a prepared GPU script: ``prepare --out DIR`` here, ``run --data DIR --out DIR [--tiny]`` there."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("step", choices=["prepare", "run"])
    parser.add_argument("--data", default=data, help="where `prepare` wrote the dataset")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help=tiny)
    args = parser.parse_args()
    prepare(args.out) if args.step == "prepare" else run(args.data, args.out, args.tiny)


if __name__ == "__main__":
    command_line(__doc__.splitlines()[0], prepare, run, ".gpu", "the test suite's model sizes (a CPU check of the script)")

"""The README's real-checkpoint command end to end through run_recbole, on a Janus-Pro-shaped checkpoint.

The checkpoint has random weights (tests/janus_pro_fixture.py). A few LoRA SFT steps (bf16, vision history, 384 px
items), one evaluation with the image metrics, one RL step from that checkpoint, ``recbole-gen generate``,
``recbole-gen export`` and a reload of the export that must draw the same images; time and peak memory per stage go to
``janus_pro.json``.

    python benchmarks/scale/gpu_janus_pro.py prepare --out .gpu-janus          # here: the dataset (needs the emoji font)
    python benchmarks/scale/gpu_janus_pro.py run --data .gpu-janus --out DIR   # GPU machine: Janus-Pro-1B's full sizes
    python benchmarks/scale/gpu_janus_pro.py run --data .gpu-janus --out DIR --tiny   # the CPU fixture (tests run this)

The checkpoint folder is written by ``save_pretrained`` on the machine that runs it (Janus-Pro-1B's shapes: 1.9B
parameters, 3.7 GB in bf16), so no weights travel. The GPU machine has no RecBole, faiss, peft or emoji font: the dataset is
prepared beside the code and the packages travel as wheels (benchmarks/scale/README.md has the commands).
"""
import contextlib
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

#: docs/genlmm.md's real-checkpoint settings (the README's keys: lmm_path, finetune, history_mode, dtype, image_size),
#: cut to a few steps: 8 users' 24 training rows are 3 optimizer steps of 4 x 2 rows
README_KEYS = dict(finetune="lora", history_mode="vision", dtype="bf16", image_size=384, history_len=3,
                   learning_rate=1e-4, gradient_checkpointing=True, train_batch_size=4, gradient_accumulation_steps=2,
                   max_train_minutes=0, pretrain_steps=0, epochs=1, num_samples=2, generation_batch_size=8,
                   metrics=["Hit", "NDCG", "TargetSim", "HistorySim", "Diversity", "ImageCoverage", "Novelty", "FD"])
RL_KEYS = dict(stage="rl", rl_steps=1, rl_batch_size=2, rl_group_size=2, rl_recommender_weight=0.0)
USERS = ["u3", "u5"]


def prepare(out):
    """16 emoji (4 per subgroup) and 8 users x 6 interactions under ``out/data``; returns RecBole's data_path."""
    from test_genlmm_support import emoji64, write_dataset

    pixels, names, groups = emoji64.__wrapped__()
    keep = [0] + [group * 16 + i + 1 for group in range(4) for i in range(4)]
    data = write_dataset(Path(out) / "data", (pixels[keep], [names[i] for i in keep], groups[keep]), n_users=8,
                         length=6, seed=2)
    print(f"dataset written under {data}")
    return data


class Stages:
    """``with stages(name) as entry:`` times a stage and records its peak memory (CUDA's peak allocation on a GPU, the
    process's peak RSS on a CPU: a running maximum there, it cannot be reset), then writes the report to ``path``."""

    def __init__(self, device, report, path):
        self.device, self.report, self.path = device, report, path

    @contextlib.contextmanager
    def __call__(self, name):
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        entry = self.report["stages"][name] = {}
        yield entry
        entry["seconds"] = round(time.perf_counter() - started, 2)
        if self.device.type == "cuda":
            entry["peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 30, 2)
        else:
            entry["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
        self.save()
        print(json.dumps({name: entry}), flush=True)

    def save(self):
        self.path.write_text(json.dumps(self.report, indent=1) + "\n")


def _pngs(folder):
    import numpy as np
    from PIL import Image

    return {path.name: np.asarray(Image.open(path)) for path in sorted(Path(folder).glob("*.png"))}


def run(data, out, tiny=False):
    """Every stage in order; returns the report (also written to ``out/janus_pro.json`` after each stage)."""
    import numpy as np
    import torch
    import transformers

    from janus_pro_fixture import write_janus_pro
    from recbole_gen.checkpoint import load_checkpoint
    from recbole_gen.cli import main
    from recbole_gen.quick_start import run_recbole
    from test_genlmm_support import recbole_config

    out = Path(out)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    size = "fixture" if tiny else "1b"
    report = {"command": "python " + " ".join(sys.argv), "size": size,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__, "uptime_start": _uptime(), "stages": {}}
    stages = Stages(device, report, out / "janus_pro.json")
    with stages("write checkpoint") as entry:
        folder = write_janus_pro(out / f"Janus-Pro-{size}", size, device=device)
        entry["bytes"] = sum(path.stat().st_size for path in folder.iterdir())
    config = recbole_config(Path(data) / "data", **README_KEYS, lmm_path=str(folder), cache_dir=str(out / "cache"),
                            checkpoint_dir=str(out / "saved"), log_dir=str(out / "log"), eval_step=0)
    with stages("sft + test") as entry:
        sft = run_recbole(model="GenLMM", dataset="gtiny", config_dict=config)
        steps, seconds = sft["train_steps"], sft["train_throughput"]["seconds"]
        adapter = [v for k, v in load_checkpoint(sft["model_file"])["state_dict"].items() if ".lora_B." in k]
        entry.update(optimizer_steps=steps, step_seconds=round(seconds / steps, 2), test_seconds=round(sft["test_seconds"], 2),
                     test=_rounded(sft["test_result"]), adapter_trained=any(bool(v.abs().sum() > 0) for v in adapter))
    with stages("rl step + validation + test") as entry:
        rl = run_recbole(model="GenLMM", dataset="gtiny", config_dict={**config, **RL_KEYS, "init_from": sft["model_file"]})
        history = load_checkpoint(rl["model_file"])["rl"]["history"]
        entry.update(rl_steps=len(history), step_seconds=round(history[-1]["step_seconds"], 2), test=_rounded(rl["test_result"]))
    # a loaded checkpoint reads and writes where the command line says, not where its config says (docs/reliability.md)
    paths = [f"--{key}={config[key]}" for key in ("data_path", "cache_dir", "log_dir")]
    generate = ["generate", *(arg for user in USERS for arg in ("--user", user)), "--num-samples", "2", "--seed", "1", *paths]
    with stages("generate") as entry:
        main(generate + ["--model-file", rl["model_file"], "--out", str(out / "generated")])
        drawn = _pngs(out / "generated")
        entry.update(images=len(drawn), shapes=[list(shape) for shape in sorted({image.shape for image in drawn.values()})])
    with stages("export"):
        main(["export", "--model-file", rl["model_file"], "--out", str(out / "exported")])
    with stages("generate from the export") as entry:
        main(generate + ["--model-file", str(out / "exported"), "--out", str(out / "regenerated")])
        again = _pngs(out / "regenerated")
        entry["same_images"] = again.keys() == drawn.keys() and all(np.array_equal(again[k], drawn[k]) for k in drawn)
    report["uptime_end"] = _uptime()
    stages.save()
    return report


def _uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _rounded(result):
    return {key: round(float(value), 4) for key, value in result.items()}


if __name__ == "__main__":
    from gpu_smoke import command_line

    command_line(__doc__.splitlines()[0], prepare, run, ".gpu-janus", "the CPU fixture's sizes instead of Janus-Pro-1B's")

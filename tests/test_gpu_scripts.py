"""The prepared GPU scripts (benchmarks/scale/gpu.py, gpu_smoke.py) run on the CPU with their --tiny sizes, so a change
to the code they drive breaks here, not in the few sessions that have a GPU to run them on."""
import json
import os
import subprocess
import sys
from pathlib import Path

from test_genlmm_support import free_port

ROOT = Path(__file__).resolve().parents[1]


def _script(script, *args, timeout=600):
    """``python benchmarks/scale/<script> args`` in the test's own folder (RecBole writes log folders there)."""
    env = {**os.environ, "MASTER_PORT": free_port(), "OMP_NUM_THREADS": os.environ.get("RECBOLE_GEN_TEST_THREADS", "2")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale" / script), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_gpu_benchmark_runs_ddp_fsdp_and_generation_at_tiny_sizes(tmp_path):
    out = tmp_path / "gpu.json"
    _script("gpu.py", "--tiny", "--steps", "2", "--gen-batch", "4", "--prompt", "16", "--out", str(out))
    report = json.loads(out.read_text())
    assert [(r["strategy"], r["gradient_checkpointing"]) for r in report["sft"]] == [
        ("ddp", False), ("fsdp", False), ("fsdp", True)]
    for row in report["sft"]:
        assert "error" not in row and row["parameters"] == report["sft"][0]["parameters"]  # sharding keeps them all
        assert all(0 < loss < 20 for loss in row["losses"]) and row["median_step_s"] > 0
    generation = report["generation"]
    assert generation["rows_with_guidance"] == 8 and generation["pixels"][0] == 4 and generation["image_tokens_per_s"] > 0


def test_gpu_smoke_runs_every_stage_through_run_recbole_at_tiny_sizes(tmp_path):
    _script("gpu_smoke.py", "prepare", "--out", str(tmp_path / "data"))
    _script("gpu_smoke.py", "run", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
            "--tiny")
    report = json.loads((tmp_path / "run" / "gpu_smoke.json").read_text())
    assert [r["run"].split()[0] for r in report["runs"]] == ["GenLMM", "GenLMM", "GenLMM", "SASRec"]
    for run in report["runs"]:
        assert "error" not in run and {"hit@10", "targetsim", "fd"} <= set(run["test"]), run

"""The real-checkpoint path on a Janus-Pro-shaped checkpoint (tests/janus_pro_fixture.py: Janus-Pro-1B's image,
VQ, vision-tower and vocabulary shapes, its module names, special tokens and chat layout, cut-down widths, random
weights): its tokenizer, prompt, LoRA targets and image normalisation, then the README's command end to end through
run_recbole (SFT, evaluation with 384 px drawings and image metrics, one RL step, generate, export, reload)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from recbole_gen.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_janus_pro", ROOT / "benchmarks" / "scale" / "gpu_janus_pro.py")
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)


@pytest.fixture(scope="module")
def janus_data(tmp_path_factory):
    """The GPU script's dataset (16 emoji, 8 users x 6 interactions): the folder ``prepare`` wrote it under."""
    root = tmp_path_factory.mktemp("janus-data")
    script.prepare(root)
    return root


def test_readme_real_checkpoint_command_end_to_end(janus_data, tmp_path):
    """benchmarks/scale/gpu_janus_pro.py --tiny: SFT -> evaluation (384 px drawings through the catalogue, image
    metrics) -> one RL step from that checkpoint -> recbole-gen generate -> export -> the export draws the same images."""
    report = script.run(janus_data, tmp_path, tiny=True)
    stages = report["stages"]
    assert json.loads((tmp_path / "janus_pro.json").read_text())["stages"].keys() == stages.keys()
    sft, rl = stages["sft + test"], stages["rl step + validation + test"]
    assert sft["optimizer_steps"] == 3 and sft["adapter_trained"]  # LoRA's B starts at 0: the steps trained it
    assert set(sft["test"]) == {"hit@10", "ndcg@10", "targetsim", "historysim", "diversity", "imagecoverage", "novelty",
                                "fd"}
    assert all(np.isfinite(v) for v in [*sft["test"].values(), *rl["test"].values()]), (sft, rl)
    assert rl["rl_steps"] == 1
    assert stages["generate"]["images"] == 4 and stages["generate"]["shapes"] == [[384, 384, 3]]
    assert stages["generate from the export"]["same_images"]
    state = load_checkpoint(next((tmp_path / "saved").glob("GenLMM-*.pth")))["state_dict"]
    assert not any("base_layer" in k or "vision_model" in k for k in state)  # the checkpoints hold no frozen weight

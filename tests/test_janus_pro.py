"""The real-checkpoint path on a Janus-Pro-shaped checkpoint (tests/janus_pro_fixture.py: Janus-Pro-1B's image,
VQ, vision-tower and vocabulary shapes, its module names, special tokens and chat layout, cut-down widths, random
weights): its tokenizer, prompt, LoRA targets and image normalisation, then the README's command end to end through
run_recbole (SFT, evaluation with 384 px drawings and image metrics, one RL step, generate, export, reload)."""
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from janus_pro_fixture import BOI, BOS, EOI, EOS, IMAGE, PAD, SPECIAL_IDS, write_janus_pro
from recbole_gen.checkpoint import load_checkpoint
from recbole_gen.model.backbone import HFTokenizer, image_normalisation
from test_genlmm_support import make_core

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_janus_pro", ROOT / "benchmarks" / "scale" / "gpu_janus_pro.py")
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)


@pytest.fixture(scope="module")
def janus_pro(tmp_path_factory):
    return write_janus_pro(tmp_path_factory.mktemp("janus-pro") / "Janus-Pro-fixture")


@pytest.fixture(scope="module")
def janus_data(tmp_path_factory):
    """The GPU script's dataset (16 emoji, 8 users x 6 interactions): the folder ``prepare`` wrote it under."""
    root = tmp_path_factory.mktemp("janus-data")
    script.prepare(root)
    return root


@pytest.fixture(scope="module")
def janus_core(janus_pro, janus_data):
    """GenLMM's core on the fixture with the README's keys."""
    return make_core((janus_data / "data", janus_data / "cache"), **script.README_KEYS, lmm_path=str(janus_pro))


def test_tokenizer_carries_janus_pros_special_tokens_and_chat_layout(janus_pro, janus_core):
    tokenizer = HFTokenizer(janus_pro)
    assert type(tokenizer.tokenizer).__name__ == "TokenizersBackend"  # AutoTokenizer's fast tokenizer
    assert tokenizer.special == {"<bos>": SPECIAL_IDS[BOS], "<eos>": SPECIAL_IDS[EOS], "<pad>": SPECIAL_IDS[PAD],
                                 "<begin_of_image>": SPECIAL_IDS[BOI], "<end_of_image>": SPECIAL_IDS[EOI],
                                 "<image_placeholder>": SPECIAL_IDS[IMAGE]}
    assert tokenizer.user_turn == ("<|User|>: ", "\n\n<|Assistant|>:")

    core = janus_core
    assert (core.backbone.image_size, core.backbone.grid, core.num_image_tokens) == (384, 24, 576)
    ids, mask = core.prompt.batch([[1, 2], []])
    bos, boi, eoi, slot = (SPECIAL_IDS[token] for token in (BOS, BOI, EOI, IMAGE))
    head = [bos] + tokenizer.encode("<|User|>: Draw the next item.")
    item, close = [boi] + [slot] * 576 + [eoi], tokenizer.encode("\n\n<|Assistant|>:")
    assert [head[1], close[2]] == tokenizer.tokenizer.convert_tokens_to_ids(["<|User|>", "<|Assistant|>"])  # one token each
    assert ids[0].tolist() == head + item + item + close + [boi]
    assert ids[1][mask[1].bool()].tolist() == head + close + [boi]  # the unconditional prompt, left-padded
    assert (ids[1][~mask[1].bool()] == SPECIAL_IDS[PAD]).all()


def test_a_tokenizer_without_janus_image_tokens_is_refused(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<s>": 0, "<unk>": 1, "a": 2}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", unk_token="<unk>").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="<begin_of_image>, <end_of_image>, <image_placeholder>: it is not a Janus"):
        HFTokenizer(tmp_path)


def test_lora_adapts_every_projection_of_the_language_model_and_nothing_else(janus_core):
    core = janus_core
    adapted = {name.split(".lora_A.")[0] for name, _ in core.lmm.named_parameters() if ".lora_A." in name}
    assert len(adapted) == 7 * core.lmm.config.text_config.num_hidden_layers  # q, k, v, o, gate, up, down
    assert all(name.startswith("model.language_model.layers.") for name in adapted)


def test_vision_input_is_normalised_as_the_checkpoints_image_processor_says(janus_pro, janus_core, tmp_path):
    from transformers import JanusImageProcessor

    assert image_normalisation(janus_pro) == ((0.5,) * 3, (0.5,) * 3) == (janus_core.backbone.image_mean,
                                                                         janus_core.backbone.image_std)
    JanusImageProcessor(do_normalize=False).save_pretrained(tmp_path)
    assert image_normalisation(tmp_path) == ((0.0,) * 3, (1.0,) * 3)
    with pytest.raises(FileNotFoundError, match="image processor"):
        image_normalisation(tmp_path / "none")

    items, backbone = torch.tensor([1, 2]), janus_core.backbone
    pixels = janus_core.item_pixels(items)
    try:  # a checkpoint whose processor does not normalise: the vision tower sees the [0, 1] pixels themselves
        janus_core.backbone = dataclasses.replace(backbone, image_mean=(0.0,) * 3, image_std=(1.0,) * 3)
        with torch.no_grad():
            expected = janus_core.lmm.model.get_image_features(pixel_values=pixels.bfloat16()).pooler_output
            assert torch.equal(janus_core.item_representations(items), expected)
    finally:
        janus_core.backbone = backbone


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

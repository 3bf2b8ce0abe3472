"""GenLMM inside RecBole: run_recbole trains / saves / evaluates; checkpoints reload to identical
generations; LoRA checkpoints hold only the adapter; a save_pretrained Janus loads via lmm_path;
the target item never influences generation; the generate API and CLI write PNGs + a manifest."""
import json
import os

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_gen.checkpoint import load_checkpoint
from recbole_gen.model.backbone import save_tiny_checkpoint
from recbole_gen.quick_start import load_data_and_model, run_recbole
from test_genlmm_support import emoji64, make_core, recbole_config, gtiny, write_dataset  # noqa: F401


@pytest.fixture(scope="module")
def data_path(tmp_path_factory, emoji64):
    return write_dataset(tmp_path_factory.mktemp("genlmm_data"), emoji64)


def _run(data_path, tmp_path, **overrides):
    config = recbole_config(data_path, cache_dir=str(tmp_path / "cache"), **overrides)
    return run_recbole(model="GenLMM", dataset="gtiny", config_dict=config)


@pytest.fixture(scope="module")
def full_run(data_path, tmp_path_factory):
    """One run_recbole of the full fine-tuning mode, shared by the tests that only read its checkpoint."""
    folder = tmp_path_factory.mktemp("genlmm_run")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = _run(data_path, folder)
        result["model_file"] = str(folder / result["model_file"])
    finally:
        os.chdir(cwd)
    return result


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_run_save_load_generates_identically(data_path, tmp_path, full_run, finetune):
    result = full_run if finetune == "full" else _run(data_path, tmp_path, finetune=finetune)
    assert set(result["test_result"]) == {"hit@10", "ndcg@10"}
    checkpoint = load_checkpoint(result["model_file"])
    keys = list(checkpoint["state_dict"])
    if finetune == "lora":
        language_model = [k for k in keys if ".language_model." in k]
        assert language_model and all("lora_" in k for k in language_model), language_model[:8]  # adapters only
    assert not any("vision_model" in k for k in keys)  # frozen parts are rebuilt, not saved ...
    assert any("vqmodel" in k for k in keys)  # ... but the catalogue-trained tokenizer travels with the checkpoint
    assert isinstance(checkpoint["config"], dict)  # plain data: loading it runs no code

    config, model, dataset, train_data, valid_data, test_data = load_data_and_model(result["model_file"],
                                                                                    checkpoint_paths=True)
    model.eval()
    first = model.generate(histories=[[1, 2, 3], [], [40]], num_samples=2, seed=5)
    # a second independent load gives the same images
    _, again, *_ = load_data_and_model(result["model_file"], checkpoint_paths=True)
    second = again.generate(histories=[[1, 2, 3], [], [40]], num_samples=2, seed=5)
    assert torch.equal(first.tokens, second.tokens)
    # and the loaded weights are the trained ones, not a fresh init
    state = again.state_dict()
    assert all(torch.equal(state[k], checkpoint["state_dict"][k]) for k in keys)


def test_target_items_do_not_change_generated_images(full_run):
    result = full_run
    _, model, _, _, _, test_data = load_data_and_model(result["model_file"], checkpoint_paths=True)
    model.eval()
    batch = next(iter(test_data))[0]
    data = {k: batch[k] for k in (model.ITEM_SEQ, model.ITEM_SEQ_LEN, model.ITEM_ID)}
    permuted = dict(data)
    permuted[model.ITEM_ID] = data[model.ITEM_ID][torch.randperm(len(data[model.ITEM_ID]), generator=torch.Generator().manual_seed(0))]
    first = model.generate_images(Interaction(data))
    second = model.generate_images(Interaction(permuted))
    assert torch.equal(first.pixels, second.pixels) and torch.equal(first.plans, second.plans)
    assert first.pixels.shape[:2] == (len(data[model.ITEM_ID]), 2)


def test_generate_api_and_cli_write_pngs_and_manifest(full_run, tmp_path):
    result = full_run
    from recbole_gen.cli import main

    out = tmp_path / "gen"
    assert main(["generate", "--model-file", result["model_file"], "--user", "u3", "--user", "u7",
                 "--num-samples", "2", "--out", str(out), "--seed", "1", "--checkpoint-paths"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest) == 4 and {m["user"] for m in manifest} == {"u3", "u7"}
    assert all((out / m["png"]).is_file() and m["seed"] == 1 and len(m["history"]) <= 3 for m in manifest)
    assert manifest[0]["history_tokens"][0].startswith("e")


def test_generate_for_a_user_reads_their_whole_training_history(full_run, data_path):
    """RecBole's augmentation leaves the first interaction in no row's item_id: it must still be in the history."""
    _, model, dataset, *_ = load_data_and_model(full_run["model_file"], checkpoint_paths=True)
    lines = (data_path / "gtiny" / "gtiny.inter").read_text().splitlines()[1:]
    rows = sorted((float(t), i) for u, i, t in (line.split("\t") for line in lines) if u == "u3")
    training = [i for _, i in rows][:-2]  # leave-one-out: the last two are validation and test
    history = model.user_history("u3")
    assert dataset.id2token(dataset.iid_field, history).tolist() == training

def test_save_pretrained_janus_loads_through_lmm_path(emoji64, gtiny, tmp_path):
    tiny = make_core(gtiny)
    folder = save_tiny_checkpoint(tiny.backbone, tmp_path / "janus-tiny")
    loaded = make_core(gtiny, lmm_path=str(folder))
    assert loaded.backbone.is_pretrained and not tiny.backbone.is_pretrained
    loaded.content_proj.load_state_dict(tiny.content_proj.state_dict())  # the only part outside Janus
    hist, target = [[1, 2, 3], []], torch.tensor([4, 5])
    with torch.no_grad():
        assert torch.allclose(tiny.loss(hist, target), loaded.loss(hist, target), atol=1e-5)
    items = torch.arange(tiny.item_num)
    assert torch.equal(tiny.tokens_of(items), loaded.tokens_of(items))  # the checkpoint's own VQ tokenizes the catalogue
    assert torch.equal(tiny.generate_tokens(hist, temperature=0)[0], loaded.generate_tokens(hist, temperature=0)[0])


def test_missing_lmm_path_is_a_clear_error(emoji64, gtiny, tmp_path):
    from recbole_gen.config import ConfigError

    with pytest.raises(ConfigError, match="lmm_path must be ~ or a folder"):  # checked before anything is built
        make_core(gtiny, lmm_path=str(tmp_path / "nowhere"))


def test_rl_stage_from_the_command_line(data_path, full_run, tmp_path):
    """Stage 2 as a user types it: run_recbole --stage=rl --init_from=<the SFT checkpoint>."""
    import yaml

    from recbole_gen.cli import run_recbole_main

    config = recbole_config(data_path, cache_dir=str(tmp_path / "cache"))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    saved = tmp_path / "saved"
    code = run_recbole_main(["--model=GenLMM", "--dataset=gtiny", f"--config_files={tmp_path / 'tiny.yaml'}",
                             "--stage=rl", f"--init_from={full_run['model_file']}", "--rl_steps=2", "--rl_batch_size=4",
                             "--rl_group_size=2", "--rl_recommender_weight=0", f"--checkpoint_dir={saved}"])
    assert code in (0, None)
    checkpoint = load_checkpoint(next(saved.glob("GenLMM-*.pth")))
    assert checkpoint["rl"]["step"] == 2 and checkpoint["rl"]["init_from"] == full_run["model_file"]
    assert checkpoint["config"]["stage"] == "rl"


def test_epochs_0_evaluates_an_init_from_checkpoint_as_it_is(data_path, tmp_path, full_run, monkeypatch):
    """The benchmark's GenLMM-plan row: the SFT checkpoint, not trained further, ranked by its plan head."""
    monkeypatch.chdir(tmp_path)
    result = _run(data_path, tmp_path, init_from=full_run["model_file"], epochs=0, gen_rank_by="plan")
    assert result["epochs"] == 0 and os.path.isfile(result["model_file"])
    trained, evaluated = load_checkpoint(full_run["model_file"]), load_checkpoint(result["model_file"])
    assert all(torch.equal(v, evaluated["state_dict"][k]) for k, v in trained["state_dict"].items())
    assert set(result["test_result"]) == {"hit@10", "ndcg@10"}


def test_a_rerun_reading_cached_artifacts_trains_the_same_model(data_path, tmp_path):
    """Whether this run builds the tokenizer and pre-training or reads them from the cache, training starts from
    the same weights and the same random state: the same checkpoint, the same results."""
    first = _run(data_path, tmp_path, checkpoint_dir=str(tmp_path / "first"), pretrain_steps=20, cond_dropout=0.1)
    again = _run(data_path, tmp_path, checkpoint_dir=str(tmp_path / "again"), pretrain_steps=20, cond_dropout=0.1)
    built, cached = (load_checkpoint(run["model_file"])["state_dict"] for run in (first, again))
    assert all(torch.equal(built[k], cached[k]) for k in built)
    assert first["test_result"] == again["test_result"]

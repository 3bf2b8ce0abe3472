"""GenDiff: the denoising loss falls on the tiny fixture, sampling is seeded and guidance 0 is the conditional
model, a diffusers UNet / pipeline saved with save_pretrained loads offline through diffusers_path, GenDiff shares
GenLMM's cached tokenizer, and run_recbole trains, saves and evaluates a checkpoint that reloads to identical
images (and never reads the target)."""
import dataclasses
import json

import pytest
import torch
import yaml
from diffusers import AutoencoderKL, DDIMScheduler
from recbole.data.interaction import Interaction

from recbole_gen.checkpoint import load_checkpoint
from recbole_gen.config import Config, ConfigError
from recbole_gen.model.decoding import guide, row_generators
from recbole_gen.model.gendiff_config import GenDiffSettings
from recbole_gen.model.vq import VQ_ARCHITECTURE
from recbole_gen.quick_start import load_data_and_model, run_recbole
from recbole_gen.utils import properties_dir
from test_genlmm_support import emoji64, group_sequences, gtiny, make_model, recbole_config, train_core  # noqa: F401

TINY_DIFF = dict(unet_channels=[32, 32], unet_layers_per_block=1, unet_attention_heads=2, history_width=32,
                 num_inference_steps=4, learning_rate=3e-3)


def _gendiff(gtiny, **overrides):
    return make_model(gtiny, "GenDiff", **{**TINY_DIFF, **overrides})


@pytest.fixture(scope="module")
def trained(emoji64, gtiny):
    """A tiny GenDiff trained on same-subgroup users, with its loss before and after (fixed noise and levels)."""
    _, _, groups = emoji64
    model = _gendiff(gtiny)
    sequences = group_sequences(groups, 200, 4, seed=1)
    histories, targets = [s[:3] for s in sequences], torch.tensor([s[3] for s in sequences])

    def held_loss():
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return model.core.loss(histories[:64], targets[:64]).item()

    before = held_loss()
    torch.manual_seed(0)
    train_core(model.core, histories, targets, steps=60)
    return model, before, held_loss()


def test_the_denoising_loss_falls(trained):
    _, before, after = trained
    assert after < 0.6 * before, (before, after)


def test_sampling_is_seeded_per_user_and_sample(trained):
    model, _, _ = trained
    first = model.generate(histories=[[1, 2, 3], [40], []], num_samples=2, seed=7)
    again = model.generate(histories=[[1, 2, 3], [40], []], num_samples=2, seed=7)
    alone = model.generate(histories=[[40]], num_samples=2, seed=7)
    assert torch.equal(first.pixels, again.pixels) and torch.equal(first.tokens, again.tokens)
    samples = model.core.sample([[1, 2, 3]], num_samples=2, seed=7, num_inference_steps=4)
    reseeded = model.core.sample([[1, 2, 3]], num_samples=2, seed=8, num_inference_steps=4)
    assert not torch.allclose(samples, reseeded)  # another seed, other noise (snapped codes may still agree)
    assert not torch.allclose(samples[0, 0], samples[0, 1])  # each sample starts from its own noise
    assert torch.allclose(first.pixels[1], alone.pixels[0], atol=1e-4)  # the rest of the batch does not matter
    assert first.pixels.shape == (3, 2, 3, 16, 16) and (first.plans == -1).all()
    assert first.tokens.shape == (3, 2, 16) and [m["history"] for m in first.manifest[::2]] == [[1, 2, 3], [40], []]


def _by_hand(core, histories, guidance_scale, steps=4, seed=3):
    """DDIM with diffusers' own scheduler, written out: the conditional prediction, guided by the unconditional."""
    scheduler = DDIMScheduler.from_config(core.schedule.config)
    scheduler.set_timesteps(steps)
    x = torch.stack([torch.randn(core.shape, generator=g) for g in row_generators(seed, histories, [0] * len(histories))])
    cond, uncond = core.condition(histories), core.condition([[] for _ in histories])
    for t in scheduler.timesteps:
        out = guide(core.predict(x, t, *cond), core.predict(x, t, *uncond), guidance_scale)
        x = scheduler.step(out, t, x).prev_sample
    return x


def test_guidance_zero_is_the_conditional_branch(trained):
    core = trained[0].core
    histories = [[1, 2, 3], [50, 51]]
    with torch.no_grad():
        plain = core.sample(histories, 1, seed=3, num_inference_steps=4, guidance_scale=0.0)[:, 0]
        guided = core.sample(histories, 1, seed=3, num_inference_steps=4, guidance_scale=2.0)[:, 0]
        assert torch.allclose(plain, _by_hand(core, histories, 0.0), atol=1e-5)
        assert torch.allclose(guided, _by_hand(core, histories, 2.0), atol=1e-5)
    assert not torch.allclose(plain, guided, atol=1e-3)


def test_gendiff_shares_genlmm_s_cached_tokenizer(trained, gtiny):
    gendiff, genlmm = trained[0], make_model(gtiny)
    assert gendiff.artifact_info["tokenizer"]["key"] == genlmm.artifact_info["tokenizer"]["key"]
    items = torch.arange(1, genlmm.core.item_num)
    assert torch.equal(gendiff.core.tokens_of(items), genlmm.core.tokens_of(items))
    latents = gendiff.core.latents_of(items)  # each item's latent snaps back to its own tokens
    assert torch.equal(gendiff.core.decode(latents)[1], gendiff.core.tokens_of(items))


def test_a_saved_diffusers_unet_loads_offline_through_diffusers_path(trained, gtiny, tmp_path):
    tiny = trained[0].core
    tiny.unet.save_pretrained(tmp_path / "pipe" / "unet")
    tiny.schedule.save_pretrained(tmp_path / "pipe" / "scheduler")
    loaded = _gendiff(gtiny, diffusers_path=str(tmp_path / "pipe")).core
    assert all(torch.equal(a, b) for a, b in zip(tiny.unet.state_dict().values(), loaded.unet.state_dict().values()))
    loaded.content_proj.load_state_dict(tiny.content_proj.state_dict())  # the history representation: outside the UNet
    loaded.null_token.data.copy_(tiny.null_token)
    loaded.recency.data.copy_(tiny.recency)
    histories = [[1, 2, 3], []]
    assert torch.equal(tiny.sample(histories, 2, seed=1, num_inference_steps=4),
                       loaded.sample(histories, 2, seed=1, num_inference_steps=4))
    with pytest.raises(FileNotFoundError, match="diffusers_path"):
        _gendiff(gtiny, diffusers_path=str(tmp_path / "nowhere"))


def test_a_pipeline_folder_with_a_vae_is_latent_diffusion(gtiny, tmp_path):
    from diffusers import UNet2DConditionModel

    folder = tmp_path / "pipe"
    AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, sample_size=32).save_pretrained(folder / "vae")
    UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 32), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
                         cross_attention_dim=24, attention_head_dim=2).save_pretrained(folder / "unet")
    model = _gendiff(gtiny, diffusers_path=str(folder))
    core = model.core
    assert core.space == "vae" and core.shape == (4, 16, 16) and core.content_proj[0].out_features == 24
    loss = core.loss([[1, 2], [3]], torch.tensor([4, 5]))
    loss.backward()
    assert torch.isfinite(loss) and core.unet.conv_in.weight.grad is not None and core.vae.encoder.conv_in.weight.grad is None
    out = model.generate(histories=[[1, 2]], num_samples=1, seed=0)
    assert out.pixels.shape == (1, 1, 3, 32, 32) and out.tokens is None
    assert not any(k.startswith("core.vae.") for k in model.state_dict())  # the VAE is rebuilt from diffusers_path


@pytest.fixture(scope="module")
def run(gtiny, tmp_path_factory):
    data_path, _ = gtiny
    folder = tmp_path_factory.mktemp("gendiff_run")
    config = recbole_config(data_path, cache_dir=str(gtiny[1]), checkpoint_dir=str(folder / "saved"),
                            log_dir=str(folder / "log"), **TINY_DIFF)
    return run_recbole(model="GenDiff", dataset="gtiny", config_dict=config)


def test_run_recbole_saves_a_checkpoint_that_reloads_to_identical_images(run):
    assert set(run["test_result"]) == {"hit@10", "ndcg@10"}
    checkpoint = load_checkpoint(run["model_file"])
    keys = list(checkpoint["state_dict"])
    assert any(k.startswith("core.unet.") for k in keys) and any(k.startswith("core.vq.") for k in keys)
    assert checkpoint["other_parameter"]["gendiff_base"] == {"diffusers_path": None, "base_seed": 2024}
    _, model, _, _, _, test_data = load_data_and_model(run["model_file"], checkpoint_paths=True)
    _, again, *_ = load_data_and_model(run["model_file"], checkpoint_paths=True)
    first = model.generate(histories=[[1, 2, 3], []], num_samples=2, seed=5)
    assert torch.equal(first.pixels, again.generate(histories=[[1, 2, 3], []], num_samples=2, seed=5).pixels)
    assert all(torch.equal(again.state_dict()[k], checkpoint["state_dict"][k]) for k in keys)  # trained, not fresh
    # the target item never changes what is drawn
    batch = next(iter(test_data))[0]
    data = {k: batch[k] for k in (model.ITEM_SEQ, model.ITEM_SEQ_LEN, model.ITEM_ID)}
    permuted = {**data, model.ITEM_ID: data[model.ITEM_ID].flip(0)}
    assert torch.equal(model.generate_images(Interaction(data)).pixels, model.generate_images(Interaction(permuted)).pixels)


def test_the_generate_command_draws_from_a_checkpoint(run, tmp_path):
    from recbole_gen.cli import main

    out = tmp_path / "gen"
    assert main(["generate", "--model-file", run["model_file"], "--user", "u3", "--num-samples", "2", "--out", str(out),
                 "--checkpoint-paths"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest) == 2 and all((out / m["png"]).is_file() and m["plan"] == -1 for m in manifest)
    assert manifest[0]["num_inference_steps"] == 4 and manifest[0]["sampler"] == "ddim"


def test_settings_come_from_the_yaml_and_name_a_wrong_key():
    documented = {**yaml.safe_load((properties_dir() / "overall.yaml").read_text()),
                  **yaml.safe_load((properties_dir() / "model" / "GenDiff.yaml").read_text())}
    assert not {f.name for f in dataclasses.fields(GenDiffSettings)} - set(documented)
    own = yaml.safe_load((properties_dir() / "model" / "GenDiff.yaml").read_text())
    genlmm = yaml.safe_load((properties_dir() / "model" / "GenLMM.yaml").read_text())
    assert not set(VQ_ARCHITECTURE) & (set(own) | set(genlmm))  # one tokenizer, its keys in overall.yaml only
    with pytest.raises(ConfigError, match="diffusion_space must be one of latent, pixel"):
        GenDiffSettings.from_config(Config(model="GenDiff", dataset="emoji-seq", config_dict={"diffusion_space": "voxels"}))


def test_recommend_gives_a_generators_nearest_items_and_case_study_points_there(run, tmp_path, capsys):
    """A generator has no item scores for RecBole's case-study helpers; their one-line error names `recommend`, which
    draws the user's images and lists each image's nearest catalogue items."""
    from recbole.utils.case_study import full_sort_topk

    from recbole_gen.cli import main
    from recbole_gen.model.generative import NotARankerError

    out = tmp_path / "rec"
    assert main(["recommend", "--model-file", run["model_file"], "--user", "u3", "--k", "3", "--num-samples", "2",
                 "--out", str(out), "--checkpoint-paths"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert [tuple(row[:3]) for row in rows] == [("u3", str(image), str(rank)) for image in (0, 1) for rank in (1, 2, 3)]
    for image in ("0", "1"):
        scores = [float(row[4]) for row in rows if row[1] == image]
        assert scores == sorted(scores, reverse=True) and len({row[3] for row in rows if row[1] == image}) == 3
    assert sorted(p.name for p in (out / "u3").iterdir()) == ["0000_00.png", "0000_01.png", "manifest.json"]
    _, model, _, _, _, test_data = load_data_and_model(run["model_file"], checkpoint_paths=True)
    with pytest.raises(NotARankerError, match="recbole-gen recommend"):
        full_sort_topk([1], model, test_data, 3)

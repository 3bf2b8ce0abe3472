"""Shared setup for the GenLMM tests: a 64-emoji catalogue (4 subgroups x 16) at 16 px written as a RecBole
dataset folder once per session, the tiny-model config, and GenLMM models built through the public path
(Config -> dataset with images -> GenLMM -> prepare_artifacts), whose small VQ trains once per session.
(No tests here; imported by tests/test_genlmm_*.py.)"""
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.data import data_preparation

from recbole_gen.config import Config

SUBGROUPS = ("face-smiling", "animal-mammal", "food-fruit", "transport-ground")
PER_GROUP = 16

TINY = dict(
    lmm_image_size=16, vq_grid=4, vq_codebook_size=64, vq_embed_dim=8, vq_base_channels=32, vq_latent_channels=32,
    vq_train_steps=60, vq_batch_size=16, vq_lr=3e-3, vq_seed=0,
    lmm_hidden_size=64, lmm_intermediate_size=128, lmm_num_layers=2, lmm_num_heads=2, lmm_max_position_embeddings=128,
    lmm_vision_hidden_size=32, lmm_vision_layers=1, lmm_vision_heads=1, cond_dropout=0.0, history_len=3,
    pretrain_steps=0, plan_stage_steps=0,
)


def catalogue_rows():
    from recbole_gen.data.emoji_seq import parse_emoji_test

    emoji = Config(model="Pop", dataset="emoji-seq")
    rows = [r for r in parse_emoji_test(emoji["emoji_test_file"]) if r["subgroup"] in SUBGROUPS]
    out = []
    for group in SUBGROUPS:
        out += [r for r in rows if r["subgroup"] == group][:PER_GROUP]
    return out, emoji["emoji_font_file"]


@pytest.fixture(scope="session")
def emoji64():
    """(pixels [65,3,16,16] row 0 = padding, names, group id per row (-1 for padding))."""
    from recbole_gen.data.emoji_seq import render_emoji
    from recbole_gen.data.images import to_float

    rows, font = catalogue_rows()
    images = render_emoji([r["char"] for r in rows], 16, font)
    pixels = to_float(np.stack([np.asarray(image).transpose(2, 0, 1) for image in images]))
    pixels = torch.cat([torch.zeros(1, 3, 16, 16), pixels])
    groups = torch.tensor([-1] + [SUBGROUPS.index(r["subgroup"]) for r in rows])
    return pixels, [""] + [r["name"] for r in rows], groups


@pytest.fixture(scope="session")
def gtiny(emoji64, tmp_path_factory):
    """The 64-emoji dataset folder and a shared cache folder: ``(data_path, cache_dir)``."""
    root = tmp_path_factory.mktemp("gtiny")
    return write_dataset(root / "data", emoji64), root / "cache"


def make_model(gtiny, model_name="GenLMM", **overrides):
    """A tiny generator (GenLMM, or ``model_name``) on the 64-emoji dataset, its artifacts prepared (the VQ trains
    once, then comes from the cache)."""
    from recbole_gen.data import create_dataset
    from recbole_gen.trainer.artifacts import prepare_artifacts
    from recbole_gen.utils import get_model

    data_path, cache = gtiny
    config = Config(model=model_name, dataset="gtiny", config_dict=recbole_config(data_path, cache_dir=str(cache), **overrides))
    train_data, _, _ = data_preparation(config, create_dataset(config, images=True))
    model = get_model(model_name)(config, train_data._dataset)
    prepare_artifacts(config, model)
    return model


def make_core(gtiny, **overrides):
    return make_model(gtiny, **overrides).core


def group_sequences(groups, n_users, length, seed):
    """Each user stays in one subgroup: the next item's subgroup is fully determined by the history."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(groups.numpy() == g) for g in range(len(SUBGROUPS))]
    out = []
    for _ in range(n_users):
        m = members[rng.integers(len(members))]
        out.append(rng.choice(m, size=length).tolist())
    return out


def train_core(core, histories, targets, steps, lr=3e-3, batch=32, seed=0):
    params = [p for p in core.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    targets = torch.as_tensor(targets)
    losses = []
    core.train()
    for _ in range(steps):
        idx = torch.randint(len(histories), (batch,), generator=gen).tolist()
        loss = core.loss([histories[i] for i in idx], targets[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    core.eval()
    return losses


def write_dataset(parent, emoji64, name="gtiny", n_users=80, length=8, seed=0):
    """RecBole atomic files + images/<token>.png for the 64-emoji catalogue; returns RecBole's data_path."""
    from PIL import Image

    pixels, names, groups = emoji64
    folder = Path(parent) / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    item = ["item_id:token\tname:token_seq\tgroup:token"]
    for i in range(1, len(names)):
        arr = pixels[i].permute(1, 2, 0).mul(255).round().byte().numpy()
        Image.fromarray(arr).save(folder / "images" / f"e{i}.png")
        item.append(f"e{i}\t{names[i]}\t{SUBGROUPS[int(groups[i])]}")
    rows = sorted((i, u, t) for u, seq in enumerate(group_sequences(groups, n_users, length, seed)) for t, i in enumerate(seq))
    assert {i for i, _, _ in rows} == set(range(1, len(names)))
    # rows sorted by item: RecBole numbers items in order of first appearance, so internal id i is emoji e<i>
    inter = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"u{u}\te{i}\t{u * 100 + t}" for i, u, t in rows]
    (folder / f"{name}.item").write_text("\n".join(item) + "\n")
    (folder / f"{name}.inter").write_text("\n".join(inter) + "\n")
    return Path(parent)


def recbole_config(data_path, **overrides):
    config = dict(
        TINY, data_path=str(data_path), dataset="gtiny", image_dir="images", item_text_field="name",
        load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]}, MAX_ITEM_LIST_LENGTH=10,
        epochs=1, train_batch_size=32, eval_batch_size=64, num_samples=2, max_train_minutes=0, warmup_steps=5,
        show_progress=False, metrics=["Hit", "NDCG"], topk=[10], valid_metric="NDCG@10", log_every_steps=0,
        learning_rate=3e-3, checkpoint_dir="saved", seed=2020,
    )
    config.update(overrides)
    return config


def free_port():
    """A TCP port nobody listens on now: a process group's rendezvous for multi-process tests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])

"""Artifacts: what a generative model needs before it is trained or used, prepared once per catalogue and cached.

:func:`prepare_artifacts` is one named step, called before the model is used by the quick start, the benchmark
and ``load_data_and_model`` alike, with a progress bar and log lines; the model receives the results:

1. **image tokenizer**: a real checkpoint's own, or (tiny model) a ``JanusVQVAE`` trained on the catalogue
   (:mod:`recbole_gen.trainer.tokenizer`), cached under ``<cache_dir>/genlmm_vq/``;
2. **catalogue image tokens** under that tokenizer, through the item image store's per-item cache;
3. **semantic plan codes** (``plan: semantic``): k-means of the items' frozen code vectors;
4. **catalogue pre-training** (``pretrain_steps``; :mod:`recbole_gen.trainer.pretrain`), cached under
   ``<cache_dir>/genlmm_pretrain/``;
5. **the plan stage** (``plan_stage_steps``, a model with a plan): the plan alone, trained on the training split's
   rows, cached under ``<cache_dir>/genlmm_plan_stage/`` (its key adds a digest of those rows).

A model restored from a checkpoint (``fresh=False``) already holds its tokenizer, codes and trained weights:
only step 2 runs. Each cached artifact is ``<prefix>-<key>.pt`` (tensors) plus ``<prefix>-<key>.json`` (how it
was built); the key is a digest of every setting that defines it and of the catalogue's image hashes. Both are
written atomically under the dataset folder's lock; a file that cannot be read is named, ignored and rebuilt.
"""
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import JanusVQVAE

from recbole_gen.config import Settings
from recbole_gen.data.cache import ArtifactCache
from recbole_gen.data.images import cache_dir, resize
from recbole_gen.files import digest, folder_lock
from recbole_gen.model import vq as vqlib
from recbole_gen.model.generative import GenerativeRecommender
from recbole_gen.model.genlmm import GenLMM

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerTraining(Settings):
    """How a catalogue-trained image tokenizer is trained (keys and defaults in the model's yaml)."""

    vq_train_steps: int
    vq_batch_size: int
    vq_lr: float
    vq_seed: int
    show_progress: bool

    def check(self):
        self.require(self.vq_train_steps >= 0, "vq_train_steps", ">= 0")
        self.require(self.vq_batch_size >= 1, "vq_batch_size", ">= 1")


@dataclass(frozen=True)
class PlanStageSettings(Settings):
    """GenLMM's plan stage (keys and defaults in properties/model/GenLMM.yaml)."""

    plan_stage_steps: int
    plan_stage_batch_size: int
    plan_stage_learning_rate: float
    plan_stage_seed: int

    def check(self):
        self.require(self.plan_stage_steps >= 0, "plan_stage_steps", ">= 0")
        self.require(self.plan_stage_batch_size >= 1, "plan_stage_batch_size", ">= 1")


@dataclass(frozen=True)
class PretrainSettings(Settings):
    """GenLMM's catalogue pre-training (keys and defaults in properties/model/GenLMM.yaml)."""

    pretrain_steps: int
    pretrain_batch_size: int
    pretrain_learning_rate: float
    pretrain_seed: int
    pretrain_instruction: str

    def check(self):
        self.require(self.pretrain_steps >= 0, "pretrain_steps", ">= 0")
        self.require(self.pretrain_batch_size >= 1, "pretrain_batch_size", ">= 1")


def prepare_artifacts(config, model, fresh=True):
    """Give ``model`` (a generative recommender; others need nothing) its tokenizer, catalogue tokens, plan codes
    and pre-training. ``fresh=False``: the model's weights come from a checkpoint; only the tokens are computed.
    Returns what was prepared (also kept in ``model.artifact_info`` and so in the checkpoint)."""
    if not isinstance(model, GenerativeRecommender) or model.image_tokenizer is None:
        return {}
    settings = TokenizerTraining.from_config(config)
    store = model.store
    cache = ArtifactCache(cache_dir(config), lambda: folder_lock(store.folder))
    catalogue = digest({"images": store.item_hashes, "size": store.image_size})
    genlmm = isinstance(model, GenLMM)
    steps = ["tokenizer", "tokens"]
    if genlmm:
        steps += (["plan codes"] if model.settings.plan == "semantic" else []) + ["pre-training"]
        steps += ["plan stage"] if model.core.has_plan else []
    info = {}
    bar = tqdm(steps if fresh else ["tokens"], desc="artifacts", unit="step", disable=not settings.show_progress)
    for step in bar:
        bar.set_postfix_str(step)
        if step == "tokenizer":
            info["tokenizer"] = _tokenizer(cache, settings, model, catalogue)
        elif step == "tokens":
            info["tokens"] = _tokens(model)
        elif step == "plan codes":
            info["plan_codes"] = _plan_codes(model.core)
        elif step == "pre-training":
            pretraining = PretrainSettings.from_config(config)
            if pretraining.pretrain_steps:
                info["pretrain"] = _pretrain(cache, pretraining, model.core, info, catalogue)
        else:
            planning = PlanStageSettings.from_config(config)
            if planning.plan_stage_steps:
                info["plan_stage"] = _plan_stage(cache, planning, model, info, catalogue)
    if fresh:
        model.artifact_info = info
    return info


def _tokenizer(cache, settings, model, catalogue):
    if model.tokenizer_pretrained:
        return {"source": "the pretrained checkpoint"}
    from recbole_gen.trainer.tokenizer import reconstruction_accuracy, train_vq

    store, vq_settings = model.store, model.tokenizer_settings
    architecture = {key: getattr(vq_settings, key) for key in vqlib.VQ_ARCHITECTURE}
    training = {key: getattr(settings, key) for key in ("vq_train_steps", "vq_batch_size", "vq_lr", "vq_seed")}
    items = torch.nonzero(store.has_image).flatten()

    def build():
        pixels = resize(store.pixels(items), vq_settings.lmm_image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.vq_seed)
            vq = JanusVQVAE(vqlib.build_vq_config(vq_settings))
        train_vq(vq, pixels, settings.vq_train_steps, settings.vq_batch_size, settings.vq_lr, settings.vq_seed)
        accuracy = reconstruction_accuracy(vq, pixels)
        logger.info(f"image tokenizer: reconstruction nearest-neighbour accuracy {accuracy:.3f}")
        return vq.state_dict(), {"settings": {**architecture, **training}, "items": len(items), "nn_accuracy": accuracy}

    key = digest({**architecture, **training, "catalogue": catalogue})
    state, info = cache.load_or_build("genlmm_vq/vq", key, build, f"the image tokenizer on {len(items)} catalogue images")
    model.image_tokenizer.load_state_dict(state)
    return info


def _tokens(model):
    """The catalogue's tokens through the store's per-item cache, keyed by the tokenizer's weights."""
    vq, size = model.image_tokenizer, model.tokenizer_image_size
    weights = tensor_digest(vq.state_dict())

    def compute(_, pixels):  # stored compactly (int16): the model reads them from the cache's memory map
        return vqlib.encode(vq, resize(pixels, size)).numpy().astype(vqlib.token_dtype(vq.config.num_embeddings))

    model.set_item_tokens(model.store.cached("genlmm_vq_tokens", {"tokenizer": weights, "size": size}, compute))
    return {"tokenizer_digest": weights}


def tensor_digest(state):
    """A digest of a state dict's exact bytes (names, shapes, dtypes and values)."""
    h = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(state.items()):
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _plan_codes(core, iterations=25):
    """k-means (cosine) of the items' frozen code vectors into ``plan_codes`` clusters, seeded by ``base_seed``."""
    s = core.settings
    with torch.no_grad():
        vectors = core.vq.quantize.get_codebook_entry(core.tokens_of(torch.arange(1, core.item_num))).flatten(1).float()
        vectors = torch.nn.functional.normalize(vectors, dim=1)
        generator = torch.Generator().manual_seed(s.base_seed)
        centres = vectors[torch.randperm(len(vectors), generator=generator)[:s.plan_codes]]
        for _ in range(iterations):
            assign = (vectors @ centres.T).argmax(1)
            sums = torch.zeros_like(centres).index_add_(0, assign, vectors)
            counts = torch.bincount(assign, minlength=len(centres))
            empty = counts == 0
            centres = torch.where(empty.unsqueeze(1), centres, torch.nn.functional.normalize(sums, dim=1))
    core.set_plan_codes(torch.cat([torch.zeros(1, dtype=torch.long), assign]))
    return {"codes": s.plan_codes, "used": int((counts > 0).sum())}


#: settings that change neither the catalogue pre-training nor the plan stage (generation, SFT-only keys)
NOT_PRETRAINING = {"truncate_history", "lmm_max_length", "cond_dropout", "gradient_checkpointing", "plan_loss_weight",
                   "plan_temperature", "num_samples", "guidance_scale", "temperature", "top_k", "top_p", "use_kv_cache",
                   "generation_seed", "generation_batch_size"}


def _pretraining_key(core, info, catalogue, run, unrelated=()):
    """The digest of everything a stage before SFT depends on: its ``run`` settings, the model's settings but
    ``unrelated`` ones, its parameters' shapes (a new layer: a new key), the tokenizer, the catalogue, the semantic
    codes and which items have training interactions (their ID embeddings and biases)."""
    model = {k: v for k, v in core.settings.as_dict().items() if k not in NOT_PRETRAINING | set(unrelated)}
    parameters = {name: list(value.shape) for name, value in core.saved_state_dict().items()}
    return digest({"run": run, "model": model, "parameters": parameters, "tokenizer": info.get("tokens"),
                   "catalogue": catalogue, "codes": core.plan_code.tolist() if core.settings.plan == "semantic" else None,
                   "seen": torch.nonzero(core.item_seen).flatten().tolist()})


def _pretrain(cache, settings, core, info, catalogue):
    from recbole_gen.trainer.pretrain import pretrain

    run = {key: getattr(settings, key) for key in ("pretrain_steps", "pretrain_batch_size", "pretrain_learning_rate",
                                                   "pretrain_seed", "pretrain_instruction")}
    key = _pretraining_key(core, info, catalogue, run, unrelated=("history_len", "instruction"))

    def build():
        result = pretrain(core, settings.pretrain_steps, settings.pretrain_batch_size, settings.pretrain_learning_rate,
                          settings.pretrain_seed, settings.pretrain_instruction)
        return core.saved_state_dict(), {"settings": run, "items": core.item_num - 1, **result}

    state, result = cache.load_or_build("genlmm_pretrain/pretrain", key, build, f"the catalogue pre-training ({settings.pretrain_steps} steps)")
    core.load_state_dict(state, strict=False)
    return result


def _plan_stage(cache, settings, model, info, catalogue):
    from recbole_gen.trainer.pretrain import plan_stage

    core, rows = model.core, model._dataset.inter_feat
    item_seq, item_len, targets = rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN], rows[model.ITEM_ID]
    run = {key: getattr(settings, key) for key in ("plan_stage_steps", "plan_stage_batch_size", "plan_stage_learning_rate",
                                                   "plan_stage_seed")}
    split = hashlib.blake2b(b"".join(t.numpy().tobytes() for t in (item_seq, item_len, targets)), digest_size=8).hexdigest()
    key = _pretraining_key(core, info, catalogue, {**run, "rows": split, "pretrain": info.get("pretrain"),
                                                   "repeatable": model.repeatable, "trains": "plan head"})

    def build():
        result = plan_stage(core, core.histories(item_seq, item_len), targets, settings.plan_stage_steps,
                            settings.plan_stage_batch_size, settings.plan_stage_learning_rate, settings.plan_stage_seed,
                            exclude=None if model.repeatable else item_seq)
        return core.saved_state_dict(), {"settings": run, "rows": len(targets), **result}

    state, result = cache.load_or_build("genlmm_plan_stage/plan", key, build,
                                        f"the plan stage ({settings.plan_stage_steps} steps on {len(targets):,} rows)")
    core.load_state_dict(state, strict=False)
    return result

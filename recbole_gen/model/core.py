"""GenLMM's model proper, independent of RecBole: prompt -> Janus language model -> image tokens.

``GenLMMCore`` owns the backbone, the frozen image tokenizer, the per-item token table, the history
representation, the SFT loss and the decoding loop. ``recbole_gen.model.genlmm.GenLMM`` wraps it as a
RecBole ``SequentialRecommender``. Everything is indexed by RecBole internal item ids (row 0 = padding).

History items enter the prompt in one of three ways (``history_mode``):

- ``semantic`` (default): each history item becomes ``history_tokens_per_item`` tokens, an MLP projection of
  the item's frozen VQ code vectors (the L2-normalised codebook entries of its image tokens, flattened).
  Cheap (1 token per item), content-based, and what lets the tiny model learn taste on a CPU.
- ``vq``: each history item enters as all its image tokens through Janus's generation embeddings
  (``grid*grid`` tokens per item).
- ``vision``: each history item enters through Janus's understanding path (vision tower + aligner,
  ``grid*grid`` tokens per item): the natural choice for a pretrained Janus-Pro checkpoint.
"""
import logging
import math
import warnings
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DynamicCache

from recbole_gen.model import vq as vqlib
from recbole_gen.model.backbone import build_backbone
from recbole_gen.model.decoding import filter_logits, guide, row_generators, sample
from recbole_gen.model.pretrain import load_or_pretrain
from recbole_gen.model.prompt import PromptBuilder

logger = logging.getLogger(__name__)

#: name of the LoRA adapter the RL stage trains on top of the (frozen) SFT adapter ``default``
RL_ADAPTER = "rl"

DEFAULTS = {
    "lmm_path": None, "dtype": "fp32", "lmm_image_size": 16, "history_len": 5, "history_mode": "semantic",
    "history_tokens_per_item": 1, "use_titles": False, "max_title_tokens": 16,
    "instruction": "Draw the next item.", "text_loss_weight": 0.0, "cond_dropout": 0.1,
    "lmm_hidden_size": 128, "lmm_intermediate_size": 512, "lmm_num_layers": 4, "lmm_num_heads": 4,
    "lmm_max_position_embeddings": 512, "lmm_vision_hidden_size": 64, "lmm_vision_layers": 1, "lmm_vision_heads": 2,
    "lmm_max_length": None, "truncate_history": False, "base_seed": 2024,
    "vq_grid": 4, "vq_codebook_size": 1024, "vq_embed_dim": 8, "vq_base_channels": 32, "vq_latent_channels": 64,
    "vq_train_steps": 1500, "vq_batch_size": 32, "vq_lr": 2e-3, "vq_seed": 0,
    "finetune": "full", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
    "lora_target_modules": r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
    "lora_modules_to_save": ["model.generation_head", "model.generation_aligner"], "train_vision": False,
    "gradient_checkpointing": False,
    "pretrain_steps": None, "pretrain_batch_size": 64, "pretrain_learning_rate": 2e-3, "pretrain_seed": 0,
    "pretrain_instruction": "Draw this item.",
}


class Settings(dict):
    """Config lookup with GenLMM's defaults for keys a config (RecBole's or a dict) does not set."""

    def __init__(self, config):
        super().__init__(DEFAULTS)
        for key in DEFAULTS:
            try:
                value = config[key]
            except KeyError:
                continue
            if value is not None or key in ("lmm_path", "lmm_max_length", "pretrain_steps"):
                self[key] = value


class GenLMMCore(nn.Module):
    def __init__(self, config, item_pixels, item_texts=None, cache_dir=".cache", token_cache=None):
        """``item_pixels``: [n_items, 3, S, S] in [0, 1] with row 0 the padding item; ``item_texts``: titles;
        ``token_cache(kind, settings, compute)``: optional per-item disk cache (``ItemImageStore.cached``)."""
        super().__init__()
        s = self.settings = Settings(config)
        self.vq_settings = vqlib.vq_settings(s)
        self.vq_info = None
        if s["lmm_path"]:
            backbone = build_backbone(s, self.vq_settings, s["base_seed"])
        else:
            vq, self.vq_info = vqlib.load_or_train_vq(resized(item_pixels[1:], int(s["lmm_image_size"])), self.vq_settings, cache_dir)
            backbone = build_backbone(s, self.vq_settings, s["base_seed"])
            backbone.model.model.vqmodel.load_state_dict(vq.state_dict())
        self.backbone = backbone
        self.lmm = backbone.model
        self.tokenizer = backbone.tokenizer
        self.num_image_tokens = backbone.grid * backbone.grid
        self.lmm.model.vqmodel.eval().requires_grad_(False)
        hidden = self.lmm.config.text_config.hidden_size
        dtype = next(self.lmm.parameters()).dtype

        pixels = resized(item_pixels, backbone.image_size)
        self.register_buffer("item_pixels", pixels, persistent=False)
        self.register_buffer("item_tokens", self._catalogue_tokens(pixels, token_cache), persistent=False)

        mode = s["history_mode"]
        if mode not in ("semantic", "vq", "vision"):
            raise ValueError(f"history_mode must be semantic, vq or vision, got {mode!r}")
        per_item = int(s["history_tokens_per_item"]) if mode == "semantic" else self.num_image_tokens
        self.tokens_per_item = per_item
        if mode == "semantic":
            code_dim = self.lmm.config.vq_config.embed_dim * self.num_image_tokens
            with torch.random.fork_rng(devices=[]):  # same init whatever ran before (like the tiny backbone)
                torch.manual_seed(int(s["base_seed"]) + 1)
                self.history_proj = nn.Sequential(nn.Linear(code_dim, hidden), nn.GELU(), nn.Linear(hidden, per_item * hidden)).to(dtype)
        self.prompt = PromptBuilder(self.tokenizer, s["instruction"], per_item, item_texts, s["use_titles"], s["max_title_tokens"])
        self.max_length = int(s["lmm_max_length"] or self.lmm.config.text_config.max_position_embeddings)
        self._configure_training()
        if s["gradient_checkpointing"]:
            lm = self.lmm.model.language_model
            if hasattr(lm, "activation_checkpointing_enable"):
                lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pretrain_info = load_or_pretrain(self, cache_dir)

    # ----------------------------------------------------------------- setup
    @torch.no_grad()
    def _catalogue_tokens(self, pixels, token_cache):
        vq = self.lmm.model.vqmodel

        def compute(indices, rows):
            return vqlib.encode(vq, resized(torch.as_tensor(rows), self.backbone.image_size)).numpy()

        if token_cache is not None:
            key = dict(self.vq_settings, lmm_path=str(self.settings["lmm_path"]), vq=(self.vq_info or {}).get("key"))
            tokens = torch.as_tensor(token_cache("genlmm_vq_tokens", key, compute)).long()
        else:
            tokens = torch.from_numpy(compute(None, pixels))
        tokens[0] = 0
        return tokens

    def _configure_training(self):
        s = self.settings
        self.lmm.requires_grad_(False)
        mode = s["finetune"]
        if mode == "full":
            names = ["model.language_model", "lm_head", "model.generation_embeddings", "model.generation_aligner",
                     "model.generation_head", "model.aligner"]
        elif mode == "lora":
            from peft import inject_adapter_in_model

            inject_adapter_in_model(self._lora_config(), self.lmm)
            names = list(s["lora_modules_to_save"] or [])
        elif mode == "none":
            names = []
        else:
            raise ValueError(f"finetune must be lora, full or none, got {mode!r}")
        if s["train_vision"]:
            names.append("model.vision_model")
        for name in names:
            self.lmm.get_submodule(name).requires_grad_(True)
        self.lmm.model.vqmodel.requires_grad_(False)
        # what a checkpoint holds: everything training may change (the frozen base is rebuilt, not saved)
        self.saved_parameters = {n for n, p in self.named_parameters() if p.requires_grad}
        self.has_rl_adapter = False

    def _lora_config(self):
        from peft import LoraConfig

        s = self.settings
        return LoraConfig(r=int(s["lora_r"]), lora_alpha=int(s["lora_alpha"]), lora_dropout=float(s["lora_dropout"]),
                          target_modules=s["lora_target_modules"], bias="none")

    def _adapter_layers(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.lmm.modules() if isinstance(m, BaseTunerLayer)]

    def add_rl_adapter(self, seed=0):
        """RL stage with ``finetune: lora``: freeze everything SFT trained and train a fresh LoRA adapter on
        top of it. The adapter starts at zero (LoRA's B = 0), so the policy starts as the SFT model, and
        switching it off (:meth:`reference_policy`) is the KL reference without a second copy of the weights."""
        if self.settings["finetune"] != "lora":
            raise ValueError("an RL adapter needs finetune: lora")
        from peft import inject_adapter_in_model

        self.requires_grad_(False)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # a second adapter is the point
            torch.manual_seed(int(seed))
            inject_adapter_in_model(self._lora_config(), self.lmm, adapter_name=RL_ADAPTER)
        for layer in self._adapter_layers():
            layer.set_adapter(["default", RL_ADAPTER])
        for name, param in self.named_parameters():
            param.requires_grad_(f".{RL_ADAPTER}." in name)
        self.saved_parameters |= {n for n, p in self.named_parameters() if p.requires_grad}
        self.has_rl_adapter = True

    @contextmanager
    def reference_policy(self):
        """This model with the RL adapter switched off: the SFT policy (LoRA RL only)."""
        layers = self._adapter_layers()
        trainable = {n: p.requires_grad for n, p in self.named_parameters()}
        for layer in layers:
            layer.set_adapter(["default"])
        try:
            yield self
        finally:
            for layer in layers:
                layer.set_adapter(["default", RL_ADAPTER])
            for name, param in self.named_parameters():  # set_adapter also flips requires_grad
                param.requires_grad_(trainable[name])

    # --------------------------------------------------------------- prompts
    def histories(self, item_seq, item_len, drop=None):
        """RecBole's left-aligned ``item_id_list`` / ``item_length`` -> the last ``history_len`` ids per row."""
        keep = int(self.settings["history_len"])
        out = []
        seq, lengths = item_seq.tolist(), item_len.tolist()
        for row, (items, n) in enumerate(zip(seq, lengths)):
            items = [i for i in items[:n] if i > 0][-keep:] if keep > 0 else []
            if drop is not None and bool(drop[row]):
                items = []
            out.append(self.prompt.fit(items, self.max_length - self.num_image_tokens - self._text_budget(),
                                       bool(self.settings["truncate_history"])))
        return out

    def _text_budget(self):
        return (self.prompt.max_title_tokens + 2) if self.settings["text_loss_weight"] else 0

    def item_representations(self, items):
        """History items [N] -> their prompt tokens [N, tokens_per_item, hidden]."""
        mode = self.settings["history_mode"]
        if mode == "semantic":
            codes = self.lmm.model.vqmodel.quantize.get_codebook_entry(self.item_tokens[items])  # [N, D, g, g]
            return self.history_proj(codes.flatten(1).to(self.history_proj[0].weight.dtype)).view(len(items), self.tokens_per_item, -1)
        if mode == "vq":
            return self.lmm.prepare_embeddings_for_image_generation(self.item_tokens[items])
        pixels = (self.item_pixels[items] * 2 - 1).to(next(self.lmm.model.vision_model.parameters()).dtype)
        return self.lmm.model.get_image_features(pixel_values=pixels).pooler_output

    def prompt_embeds(self, histories, prompt=None):
        device = self.item_tokens.device
        ids, mask = (prompt or self.prompt).batch(histories, device)
        embeds = self.lmm.get_input_embeddings()(ids)
        flat = [i for items in histories for i in items]
        if flat:
            reps = self.item_representations(torch.tensor(flat, device=device)).to(embeds.dtype)
            slots = (ids == self.prompt.slot).unsqueeze(-1)
            embeds = embeds.masked_scatter(slots, reps.reshape(-1, embeds.shape[-1]))
        return embeds, mask

    def _lm(self, embeds, mask, cache=None, position_ids=None):
        if position_ids is None:
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.lmm.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                             cache=cache, use_cache=cache is not None)

    # ------------------------------------------------------------------ loss
    def image_logits(self, histories, tokens, text=None, prompt=None):
        """Teacher-forced logits ``[N, T, V]`` of image ``tokens [N, T]`` after each history's prompt: one
        forward pass in the layout of decoding (left-padded prompt, then the image tokens). With ``text``
        (``(ids, mask)`` of ``PromptBuilder.target_text``) after the image, also the LM-head logits of that text.
        ``prompt``: another :class:`PromptBuilder` (the catalogue pre-training's instruction)."""
        embeds, mask = self.prompt_embeds(histories, prompt)
        image = self.lmm.prepare_embeddings_for_image_generation(tokens).to(embeds.dtype)
        pieces, masks = [embeds, image[:, :-1]], [mask, torch.ones_like(tokens[:, :-1])]
        if text is not None:
            text_ids, text_mask = text
            pieces[1], masks[1] = image, torch.ones_like(tokens)
            pieces.append(self.lmm.get_input_embeddings()(text_ids[:, :-1]))
            masks.append(text_mask[:, :-1])
        hidden = self._lm(torch.cat(pieces, 1), torch.cat(masks, 1)).last_hidden_state
        start, count = embeds.shape[1] - 1, tokens.shape[1]
        logits = self.lmm.model.generation_head(hidden[:, start:start + count]).float()
        text_logits = self.lmm.lm_head(hidden[:, start + count:]).float() if text is not None else None
        return logits, text_logits

    def loss(self, histories, targets, reduction="mean", prompt=None):
        """SFT cross-entropy on the target items' image tokens (+ ``text_loss_weight`` x title CE).

        ``reduction='none'`` returns the mean image-token CE per row (used to compare histories)."""
        target_tokens = self.item_tokens[targets]
        text_weight = float(self.settings["text_loss_weight"])
        text = self.prompt.target_text(targets.tolist(), target_tokens.device) if text_weight else None
        logits, text_logits = self.image_logits(histories, target_tokens, text, prompt)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target_tokens.reshape(-1), reduction="none").view(len(targets), -1)
        if reduction == "none":
            return ce.mean(1)
        loss = ce.mean()
        if text_weight:
            text_ids, text_mask = text
            text_ce = F.cross_entropy(text_logits.reshape(-1, text_logits.shape[-1]), text_ids.reshape(-1), reduction="none")
            loss = loss + text_weight * (text_ce * text_mask.reshape(-1)).sum() / text_mask.sum()
        return loss

    def token_logprobs(self, histories, tokens, temperature=1.0):
        """Log-probabilities ``[N, T]`` of given image ``tokens [N, T]`` at ``temperature`` and the policy's
        entropy at each position ``[N, T]`` (the RL stage's policy and reference scores)."""
        logits, _ = self.image_logits(histories, tokens)
        logp_all = (logits / float(temperature)).log_softmax(-1)
        logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return logp, -(logp_all.exp() * logp_all).sum(-1)

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_tokens(self, histories, num_samples=1, guidance_scale=0.0, temperature=1.0, top_k=0, top_p=1.0,
                        seed=0, use_cache=True):
        """Image tokens [B, num_samples, grid*grid] for each history (lists of item ids, oldest first)."""
        rows = [h for h in histories for _ in range(num_samples)]
        sample_index = [s for _ in histories for s in range(num_samples)]
        guided = guidance_scale != 0
        prompts = rows + [[] for _ in rows] if guided else rows
        embeds, mask = self.prompt_embeds(prompts)
        n, steps = len(rows), self.num_image_tokens
        generators = row_generators(seed, rows, sample_index)
        tokens = torch.zeros((n, steps), dtype=torch.long, device=embeds.device)
        cache = DynamicCache(config=self.lmm.config.text_config) if use_cache else None
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        next_position = position[:, -1:] + 1
        inputs, full_embeds, full_mask = embeds, embeds, mask
        for step in range(steps):
            if use_cache:
                pos = position if step == 0 else next_position + (step - 1)
                hidden = self._lm(inputs, full_mask, cache=cache, position_ids=pos).last_hidden_state[:, -1]
            else:
                hidden = self._lm(full_embeds, full_mask).last_hidden_state[:, -1]
            logits = self.lmm.model.generation_head(hidden).float()
            logits = guide(logits[:n], logits[n:] if guided else None, guidance_scale)
            token = sample(filter_logits(logits, top_k, top_p), temperature, generators)
            tokens[:, step] = token
            feed = token.repeat(2) if guided else token
            inputs = self.lmm.prepare_embeddings_for_image_generation(feed[:, None]).to(embeds.dtype)
            full_mask = torch.cat([full_mask, torch.ones_like(full_mask[:, :1])], 1)
            if not use_cache:
                full_embeds = torch.cat([full_embeds, inputs], 1)
        return tokens.view(len(histories), num_samples, steps)

    @torch.no_grad()
    def decode(self, tokens):
        """Image tokens [..., grid*grid] -> pixels [..., 3, S, S] in [0, 1] (float32)."""
        flat = tokens.reshape(-1, tokens.shape[-1])
        return vqlib.decode(self.lmm.model.vqmodel, flat).view(*tokens.shape[:-1], 3, self.backbone.image_size, self.backbone.image_size)

    # ----------------------------------------------------------- checkpoints
    def saved_state_dict(self):
        """The parameters training may change (``saved_parameters``); the rest is rebuilt on load."""
        return {k: v for k, v in super().state_dict().items() if k in self.saved_parameters}

    def base_info(self):
        return {"lmm_path": self.settings["lmm_path"], "base_seed": self.settings["base_seed"],
                "finetune": self.settings["finetune"], "vq": self.vq_info, "pretrain": self.pretrain_info}


def resized(pixels, size):
    """Pixels ``[N, 3, S, S]`` in [0, 1] at ``size`` x ``size`` (antialiased bilinear), float32."""
    pixels = pixels.float()
    if pixels.shape[-1] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return pixels.clamp(0, 1)


def count_parameters(module, trainable_only=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def lr_lambda(warmup, total, schedule):
    """Linear warm-up then constant / linear / cosine decay, as a ``LambdaLR`` factor."""

    def factor(step):
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or not total:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor

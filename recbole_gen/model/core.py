"""GenLMM's model proper, independent of RecBole: prompt -> Janus language model -> plan -> image tokens.

``GenLMMCore`` owns the backbone, the frozen image tokenizer, the per-item token table, the items' content
representation, the plan head, the SFT loss and the decoding loop. ``recbole_gen.model.genlmm.GenLMM`` wraps
it as a RecBole model. Everything is indexed by RecBole internal item ids (row 0 = padding). Nothing here
trains in a constructor: the tokenizer weights, the catalogue's image tokens and the catalogue pre-training
are artifacts that the artifact step (recbole_gen/trainer/artifacts.py) prepares and hands in.

**Content.** An item's content vector is an MLP of its frozen VQ code vectors (what the image looks like)
plus an embedding of each of its ``content_fields`` values (``.item`` columns such as a category)
(:mod:`recbole_gen.model.content`, shared with GenDiff). It generalises to items never seen in training. An item
seen in training also gets an ID embedding (``item_id_embedding``), so look-alikes can differ.

**History** items enter the prompt in one of three ways (``history_mode``): ``semantic`` (default:
``history_tokens_per_item`` tokens from the content MLP), ``vq`` (all the item's image tokens through
Janus's generation embeddings) or ``vision`` (Janus's understanding path: vision tower + aligner).

**Plan, then draw** (``plan: item | semantic``). At the ``<begin_of_image>`` position the model first
predicts *what* comes next: a full softmax over catalogue items (``item``) or over coarse semantic codes
(``semantic``: k-means clusters of the items' content), scored against the content vectors (tied), so an
item never seen in training can still be planned; an item seen in training adds a learnt bias (``plan_item_bias``:
its popularity, which content cannot tell) and, with ``plan_history_match``, its recency-weighted content similarity
to the history (a copy path for continuity) and the user's taste for its category (``content_fields``). The plan's
vector is then the next input, and the image tokens are drawn conditioned on it: teacher-forced with the true next
item in training, sampled (distinct plans for a user's images) at generation. ``plan: none`` draws straight after
``<begin_of_image>``.
"""
import math
import warnings
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DynamicCache

from recbole_gen.data.images import resize
from recbole_gen.model import sharding
from recbole_gen.model import vq as vqlib
from recbole_gen.model.backbone import DTYPES, build_backbone
from recbole_gen.model.content import ItemContent
from recbole_gen.model.decoding import distinct_plans, filter_logits, guide, row_generators, sample
from recbole_gen.model.prompt import PromptBuilder
from recbole_gen.model.taste import HistoryTaste

#: name of the LoRA adapter the RL stage trains on top of the (frozen) SFT adapter ``default``
RL_ADAPTER = "rl"
NO_PLAN = -1
PLAN_STREAM = -1  # the "sample index" whose noise stream draws a user's plans (images use 0..n-1)


class GenLMMCore(ItemContent, nn.Module):
    def __init__(self, settings, item_num, item_texts=None, content=None, item_pixels=None, counts=None):
        """``settings``: :class:`~recbole_gen.model.genlmm_config.GenLMMSettings`; ``item_num`` rows (row 0 =
        padding); ``item_texts``: titles per row; ``content``: ``{field: (LongTensor[item_num] value ids, 0 = none,
        vocabulary size)}``; ``item_pixels(ids) -> FloatTensor[len, 3, S, S]`` (``history_mode: vision`` reads it);
        ``counts``: ``FloatTensor[item_num]``, each item's training interactions (an item with any gets the per-item
        terms, and its plan bias starts at their log; ~: none)."""
        super().__init__()
        s = self.settings = settings
        self.backbone = build_backbone(s)
        self.lmm = self.backbone.model
        self.tokenizer = self.backbone.tokenizer
        self.num_image_tokens = self.backbone.grid * self.backbone.grid
        self.lmm.model.vqmodel.eval().requires_grad_(False)
        self.item_pixels = item_pixels
        hidden = self.hidden = self.lmm.config.text_config.hidden_size
        dtype = next(self.lmm.parameters()).dtype
        self.item_tokens = vqlib.ItemTokens(item_num, self.num_image_tokens, self.lmm.config.vq_config.num_embeddings, "GenLMM")

        per_item = s.history_tokens_per_item if s.history_mode == "semantic" else self.num_image_tokens
        self.tokens_per_item = per_item
        code_dim = self.lmm.config.vq_config.embed_dim * self.num_image_tokens
        counts = torch.zeros(item_num) if counts is None else torch.as_tensor(counts, dtype=torch.float32)
        self.register_buffer("item_seen", counts > 0, persistent=False)
        with torch.random.fork_rng(devices=[]):  # same init whatever ran before (like the tiny backbone)
            torch.manual_seed(s.base_seed + 1)
            self.init_content(code_dim, hidden, s.history_tokens_per_item, content or {}, dtype)
            if s.item_id_embedding:
                self.init_item_ids(hidden, dtype)
            # the per-item terms start where counting would: the bias at the log of the item's training interactions
            # (popularity), each content field's taste at the history-taste ranker's (recbole_gen/model/taste.py),
            # the content cosine's recency weights at 0; training moves them from there
            self.plan_bias = nn.Parameter(torch.log1p(counts).to(dtype)) if s.plan_item_bias and s.plan == "item" else None
            self.recency = self.taste = None
            if s.plan_history_match and s.plan == "item":
                steps = max(1, s.history_len)
                self.recency = nn.Parameter(torch.zeros(steps, dtype=dtype))
                self.taste = nn.ModuleDict({
                    name: HistoryTaste(getattr(self, f"content_{name}"), counts, steps, s.plan_prior_continuity,
                                       s.plan_prior_smoothing, s.plan_prior_decay).to(dtype)
                    for name in self.content_fields})
            if s.plan != "none":
                self.plan_query = nn.Linear(hidden, hidden).to(dtype)
                nn.init.zeros_(self.plan_query.weight)  # starts neutral: the plan's scores start as the per-item terms
                nn.init.zeros_(self.plan_query.bias)
                self.null_plan = nn.Parameter(torch.randn(hidden, dtype=dtype) * 0.02)
                self.plan_to_image = nn.Linear(hidden, hidden).to(dtype)
                nn.init.zeros_(self.plan_to_image.weight)  # starts neutral: the plan token alone conditions at first
                nn.init.zeros_(self.plan_to_image.bias)
        self.register_buffer("plan_code", torch.zeros(item_num, dtype=torch.long))
        self.prompt = PromptBuilder(self.tokenizer, s.instruction, per_item, item_texts, s.use_titles, s.max_title_tokens)
        self.max_length = s.lmm_max_length or self.lmm.config.text_config.max_position_embeddings
        self._configure_training()
        if s.gradient_checkpointing:
            lm = self.lmm.model.language_model
            if hasattr(lm, "activation_checkpointing_enable"):
                lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, method, *args, **kwargs):
        """Run one of this module's computations (``"loss"``, ``"generate_tokens"``, ``"decode"``, ...) as its
        ``forward``: under ``dist_strategy: fsdp`` (:mod:`recbole_gen.model.sharding`) the root's hooks gather the
        sharded parameters around a forward, so every use of a sharded core goes through here."""
        with self.autocast():
            return getattr(self, method)(*args, **kwargs)

    def autocast(self):
        """Compute in ``dtype`` (bf16 / fp16; a no-op for fp32), where the float32 trained parameters
        (:meth:`_float32_trained`) meet the frozen backbone's weights in that dtype."""
        dtype = DTYPES[self.settings.dtype.lower()]
        return torch.autocast(self.lmm.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def shard(self):
        """FSDP2: each decoder layer of the language model one unit, the rest of this module the root."""
        sharding.shard(self, self.lmm.model.language_model.layers, DTYPES[self.settings.dtype.lower()])

    # ----------------------------------------------------------------- artifacts handed in
    @property
    def vq(self):
        return self.lmm.model.vqmodel

    @property
    def item_num(self):
        return self.item_tokens.shape[0]

    @property
    def has_plan(self):
        return self.settings.plan != "none"

    def set_item_tokens(self, tokens):
        """The catalogue's image tokens ``[item_num, grid*grid]`` under this model's tokenizer (row 0 unused)."""
        self.item_tokens.set(tokens)

    def set_plan_codes(self, codes):
        """Each item's semantic code ``[item_num]`` (``plan: semantic``); row 0 unused."""
        self.plan_code.copy_(torch.as_tensor(codes, dtype=torch.long))

    def tokens_of(self, items):
        return self.item_tokens.of(items, self.lmm.device)

    # ----------------------------------------------------------------- training setup
    def _configure_training(self):
        s = self.settings
        self.lmm.requires_grad_(False)
        if s.finetune == "full":
            names = ["model.language_model", "lm_head", "model.generation_embeddings", "model.generation_aligner",
                     "model.generation_head", "model.aligner"]
        elif s.finetune == "lora":
            from peft import inject_adapter_in_model

            inject_adapter_in_model(self._lora_config(), self.lmm)
            names = list(s.lora_modules_to_save)
        else:
            names = []
        if s.train_vision:
            names.append("model.vision_model")
        for name in names:
            self.lmm.get_submodule(name).requires_grad_(True)
        self.vq.requires_grad_(False)
        # what a checkpoint holds: everything training may change, and a catalogue-trained tokenizer
        self.saved_parameters = {n for n, p in self.named_parameters() if p.requires_grad}
        if not self.backbone.is_pretrained:
            self.saved_parameters |= {n for n, _ in self.named_parameters() if n.startswith("lmm.model.vqmodel.")}
        if s.plan == "semantic":
            self.saved_parameters.add("plan_code")
        self.has_rl_adapter = False
        self._float32_trained()

    def _float32_trained(self):
        """Trained parameters are float32 whatever ``dtype`` (master weights; :meth:`forward` computes in ``dtype``):
        in bf16, an AdamW step of ~1e-4 is below half a unit of the last place of most weights and rounds away."""
        for param in self.parameters():
            if param.requires_grad:
                param.data = param.data.float()

    def _lora_config(self):
        from peft import LoraConfig

        s = self.settings
        return LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                          target_modules=s.lora_target_modules, bias="none")

    def _adapter_layers(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.lmm.modules() if isinstance(m, BaseTunerLayer)]

    def add_rl_adapter(self, seed):
        """RL stage with ``finetune: lora``: freeze everything SFT trained and train a fresh LoRA adapter on
        top of it. The adapter starts at zero (LoRA's B = 0), so the policy starts as the SFT model, and
        switching it off (:meth:`reference_policy`) is the KL reference without a second copy of the weights."""
        if self.settings.finetune != "lora":
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
        self._float32_trained()

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

    # --------------------------------------------------------------- content and prompts
    def histories(self, item_seq, item_len, drop=None):
        """RecBole's left-aligned ``item_id_list`` / ``item_length`` -> the last ``history_len`` ids per row."""
        keep = self.settings.history_len
        out = []
        for row, (items, n) in enumerate(zip(item_seq.tolist(), item_len.tolist())):
            items = [i for i in items[:n] if i > 0][-keep:] if keep > 0 else []
            if drop is not None and bool(drop[row]):
                items = []
            out.append(self.prompt.fit(items, self.max_length - self.num_image_tokens - self._extra_budget(),
                                       self.settings.truncate_history))
        return out

    def _extra_budget(self):
        text = (self.prompt.max_title_tokens + 2) if self.settings.text_loss_weight else 0
        return text + (1 if self.has_plan else 0)

    def content_vectors(self, items):
        """Items [N] -> their content vectors [N, hidden]: the plan head's item vectors and the plan token."""
        return self.content_tokens(items).mean(1)

    def item_representations(self, items):
        """History items [N] -> their prompt tokens [N, tokens_per_item, hidden]."""
        mode = self.settings.history_mode
        if mode == "semantic":
            return self.content_tokens(items)
        if mode == "vq":
            return self.lmm.prepare_embeddings_for_image_generation(self.tokens_of(items))
        vision = self.lmm.model.vision_model
        pixels = self.backbone.normalise(resize(self.item_pixels(items), self.backbone.image_size).to(items.device))
        return self.lmm.model.get_image_features(pixel_values=pixels.to(next(vision.parameters()).dtype)).pooler_output

    def prompt_embeds(self, histories, prompt=None):
        device = self.lmm.device
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

    # ------------------------------------------------------------------ the plan
    def plan_vectors(self):
        """The vectors plans are scored against and fed as: one per item (``plan: item``; row 0 is padding) or
        one per semantic code (the mean content vector of its items)."""
        items = torch.arange(self.item_num, device=self.lmm.device)
        vectors = self.content_vectors(items)
        if self.settings.plan == "item":
            return vectors
        codes = self.plan_code[1:]
        sums = vectors.new_zeros(self.settings.plan_codes, vectors.shape[1]).index_add_(0, codes, vectors[1:])
        counts = torch.bincount(codes, minlength=self.settings.plan_codes).clamp(min=1).unsqueeze(1)
        return sums / counts

    def plan_logits(self, hidden, histories, vectors=None):
        """Scores of every plan for rows with ``<begin_of_image>`` hidden states ``[B, hidden]`` and ``histories``
        (their prompts' item ids) -> ``[B, P]``: the hidden state's query against each plan vector, plus (``plan:
        item``) each seen item's bias and the history match (:meth:`history_match`); padding gets -inf."""
        vectors = self.plan_vectors() if vectors is None else vectors
        logits = self.plan_query(hidden.to(vectors.dtype)) @ vectors.T / math.sqrt(self.hidden)
        if self.plan_bias is not None:
            logits = logits + self.plan_bias * self.item_seen
        if self.recency is not None:
            logits = logits + self.history_match(histories, vectors)
        if self.settings.plan == "item":
            logits[:, 0] = float("-inf")
        return logits.float()

    def history_match(self, histories, vectors):
        """``[B, item_num]``: how much each item is like the row's recent history items: its cosine to each of them in
        plan-vector space, weighted by how recent that history item is (``recency``: one learnt weight per step back),
        plus, for each of the ``content_fields`` (a category), the log of the user's taste for its value
        (:class:`~recbole_gen.model.taste.HistoryTaste`). A direct path for "more like what this user took lately"
        that needs nothing learnt about the item itself, so it holds for items never seen in training; its cost grows
        with the catalogue as the plan's own scores do (a profile per row, then one product with every item)."""
        steps = len(self.recency)
        recent = torch.zeros(len(histories), steps, dtype=torch.long, device=vectors.device)
        for row, items in enumerate(histories):  # right-aligned: column k is k + 1 steps back
            if items:
                recent[row, :min(steps, len(items))] = torch.as_tensor(items[::-1][:steps], device=vectors.device)
        weights = self.recency.to(vectors.dtype) * (recent > 0)  # [B, steps]
        unit = F.normalize(vectors, dim=-1)
        match = torch.einsum("bk,bkd->bd", weights, unit[recent]) @ unit.T
        for taste in self.taste.values():
            match = match + taste(recent).to(match.dtype)
        return match

    def plan_head_parameters(self):
        """The plan head's own parameters (its query projection, item bias, history-match weights and tastes): what
        the plan stage trains. The item vectors and the language model also condition the drawing, so they are left to
        the stages that train drawing too."""
        own = [self.plan_bias, self.recency]
        taste = self.taste.parameters() if self.taste is not None else []
        return [*self.plan_query.parameters(), *(p for p in own if p is not None), *taste]

    def plan_of(self, items):
        """The plan that teaches drawing ``items``: the item itself, or its semantic code."""
        return items if self.settings.plan == "item" else self.plan_code[items]

    def plan_inputs(self, plans, vectors):
        """Plans [N] (``NO_PLAN`` = the unconditional, null plan) -> input embeddings [N, 1, hidden]."""
        out = vectors[plans.clamp(min=0)]
        return torch.where((plans < 0).unsqueeze(-1), self.null_plan.to(out.dtype).expand_as(out), out).unsqueeze(1)

    def image_inputs(self, tokens, plan_embeds=None):
        """Image tokens [N, T] -> input embeddings [N, T, hidden]: Janus's generation embeddings, plus (with a plan)
        the plan's vector through a learned map at every position, so each token is drawn in sight of its plan."""
        out = self.lmm.prepare_embeddings_for_image_generation(tokens)
        if plan_embeds is None:
            return out
        return out + self.plan_to_image(plan_embeds.to(self.plan_to_image.weight.dtype)).to(out.dtype)

    # ------------------------------------------------------------------ loss
    def forward_logits(self, histories, tokens, plans=None, text=None, prompt=None):
        """One teacher-forced pass in the layout of decoding: left-padded prompt, [plan vector], image tokens
        [, text]. Returns ``(image_logits [N, T, V], plan_logits [N, P] or None, text_logits or None)``."""
        embeds, mask = self.prompt_embeds(histories, prompt)
        pieces, masks, vectors, plan_embeds = [embeds], [mask], None, None
        if self.has_plan:
            if plans is None:
                raise ValueError(f"this model plans before it draws (plan: {self.settings.plan}): give each row's plan "
                                 f"(an item id or code, or {NO_PLAN} for the null plan)")
            vectors = self.plan_vectors()
            plan_embeds = self.plan_inputs(plans, vectors).to(embeds.dtype)
            pieces.append(plan_embeds)
            masks.append(torch.ones_like(mask[:, :1]))
        image = self.image_inputs(tokens, plan_embeds).to(embeds.dtype)
        feed = image if text is not None else image[:, :-1]
        pieces.append(feed)
        masks.append(torch.ones_like(tokens[:, :feed.shape[1]]))
        if text is not None:
            text_ids, text_mask = text
            pieces.append(self.lmm.get_input_embeddings()(text_ids[:, :-1]))
            masks.append(text_mask[:, :-1])
        hidden = self._lm(torch.cat(pieces, 1), torch.cat(masks, 1)).last_hidden_state
        prompt_end = embeds.shape[1] - 1
        start, count = prompt_end + (1 if self.has_plan else 0), tokens.shape[1]
        logits = self.lmm.model.generation_head(hidden[:, start:start + count]).float()
        plan_logits = self.plan_logits(hidden[:, prompt_end], histories, vectors) if self.has_plan else None
        text_logits = self.lmm.lm_head(hidden[:, start + count:]).float() if text is not None else None
        return logits, plan_logits, text_logits

    def loss(self, histories, targets, no_plan=None, prompt=None, plan_teacher=None, parts=False, exclude=None):
        """SFT loss: cross-entropy on the target items' image tokens (drawn from the true plan), plus
        ``plan_loss_weight`` x the plan's cross-entropy (or KL to ``plan_teacher`` probabilities [N, P] when given)
        and ``text_loss_weight`` x the title's. ``no_plan``: rows drawn from the null plan (condition dropout);
        ``exclude [N, c]``: items each row's user already took, left out of the plan's softmax (:meth:`excluding`).
        With ``parts`` returns the per-row components instead: ``{"image": [N], "plan": [N] or None}``."""
        s = self.settings
        target_tokens = self.tokens_of(targets)
        plans = None
        if self.has_plan:
            plans = self.plan_of(targets)
            if no_plan is not None:
                plans = torch.where(torch.as_tensor(no_plan, device=plans.device), torch.full_like(plans, NO_PLAN), plans)
        text = self.prompt.target_text(targets.tolist(), target_tokens.device) if s.text_loss_weight else None
        logits, plan_logits, text_logits = self.forward_logits(histories, target_tokens, plans, text, prompt)
        plan_logits = self.excluding(plan_logits, exclude, targets)
        image_ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target_tokens.reshape(-1),
                                   reduction="none").view(len(targets), -1).mean(1)
        plan_ce = F.cross_entropy(plan_logits, self.plan_of(targets), reduction="none") if self.has_plan else None
        if parts:
            return {"image": image_ce, "plan": plan_ce}
        loss = image_ce.mean()
        if self.has_plan and s.plan_loss_weight:
            if plan_teacher is not None:
                plan_term = F.kl_div(plan_logits.log_softmax(-1).clamp(min=-1e4), plan_teacher, reduction="batchmean")
            else:
                plan_term = plan_ce.mean()
            loss = loss + s.plan_loss_weight * plan_term
        if s.text_loss_weight:
            text_ids, text_mask = text
            text_ce = F.cross_entropy(text_logits.reshape(-1, text_logits.shape[-1]), text_ids.reshape(-1), reduction="none")
            loss = loss + s.text_loss_weight * (text_ce * text_mask.reshape(-1)).sum() / text_mask.sum()
        return loss

    def token_logprobs(self, histories, tokens, plans=None, temperature=1.0, plan_temperature=1.0):
        """Log-probabilities of given image ``tokens [N, T]`` (after ``plans [N]``) at ``temperature``, the plans'
        own log-probabilities ``[N]`` (zeros without a plan) and the policy's entropy per image token ``[N, T]``:
        the RL stage's policy and reference scores."""
        logits, plan_logits, _ = self.forward_logits(histories, tokens, plans)
        logp_all = (logits / temperature).log_softmax(-1)
        logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        if plan_logits is None:
            return logp, logp.new_zeros(len(tokens)), entropy
        plan_logp = (plan_logits / plan_temperature).log_softmax(-1).gather(1, plans.clamp(min=0).unsqueeze(1)).squeeze(1)
        return logp, plan_logp, entropy

    def plan_only_loss(self, histories, targets, exclude=None):
        """The plan's cross-entropy alone, from the prompt's last position: the plan stage's loss, which needs no
        image token (recbole_gen/trainer/pretrain.py)."""
        return F.cross_entropy(self.excluding(self.plan_scores(histories), exclude, targets), self.plan_of(targets))

    def excluding(self, plan_logits, exclude, targets=None):
        """Item plans' logits with each row's ``exclude`` items (0-padded; in training its own ``targets`` never) at
        -inf: a consumed item is never planned, and a user who never takes an item twice is trained, as evaluated,
        on what they can still take, so the plan is not taught to shun items like the history for being the history."""
        if exclude is None or plan_logits is None or self.settings.plan != "item":
            return plan_logits
        exclude = exclude.to(plan_logits.device).long()
        if targets is not None:
            exclude = exclude.masked_fill(exclude == targets.to(exclude.device).view(-1, 1), 0)
        return plan_logits.scatter(1, exclude, float("-inf"))

    # ------------------------------------------------------------ generation
    def plan_scores(self, histories):
        """The plan distribution's logits for each history ``[B, P]`` (GenLMM as a ranker: ``gen_rank_by: plan``)."""
        embeds, mask = self.prompt_embeds(histories)
        return self.plan_logits(self._lm(embeds, mask).last_hidden_state[:, -1], histories)

    @torch.no_grad()
    def generate_tokens(self, histories, num_samples=1, guidance_scale=0.0, temperature=1.0, top_k=0, top_p=1.0,
                        seed=0, use_cache=True, plan_temperature=1.0, plans=None, prompt=None, exclude=None):
        """Draw ``num_samples`` images per history (lists of item ids, oldest first). Returns ``(tokens [B, n,
        grid*grid], plans [B, n])``; ``plans`` may be given ``[B, n]`` to draw chosen items (e.g. a redraw);
        ``exclude [B, c]`` (0-padded): items never planned for that row (``plan: item``); ``prompt``: another
        :class:`PromptBuilder` (the catalogue pre-training's instruction)."""
        self.item_tokens.require()
        n_users = len(histories)
        rows = [h for h in histories for _ in range(num_samples)]
        sample_index = [s for _ in histories for s in range(num_samples)]
        guided = guidance_scale != 0
        n, steps = len(rows), self.num_image_tokens
        generators = row_generators(seed, rows, sample_index)

        # 1. the prompts (and, with guidance, the unconditional ones: no history, no plan)
        embeds, mask = self.prompt_embeds(rows + [[] for _ in rows] if guided else rows, prompt)
        cache = DynamicCache(config=self.lmm.config.text_config) if use_cache else None
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self._lm(embeds, mask, cache=cache, position_ids=position).last_hidden_state[:, -1]
        full_embeds, full_mask, next_position = embeds, mask, position[:, -1:] + 1

        # 2. the plan: given, or sampled from the plan head (distinct plans across a user's samples)
        chosen = torch.full((n,), NO_PLAN, dtype=torch.long, device=embeds.device)
        plan_embeds = None
        if self.has_plan:
            vectors = self.plan_vectors()
            if plans is None:
                logits = self.excluding(self.plan_logits(hidden[:n:num_samples], histories, vectors), exclude)
                user_generators = row_generators(seed, histories, [PLAN_STREAM] * n_users)
                plans = distinct_plans(logits, num_samples, plan_temperature, user_generators)
            chosen = torch.as_tensor(plans, device=embeds.device).reshape(-1)
            plan_rows = torch.cat([chosen, torch.full_like(chosen, NO_PLAN)]) if guided else chosen
            plan_embeds = self.plan_inputs(plan_rows, vectors).to(embeds.dtype)
            full_mask = torch.cat([full_mask, torch.ones_like(full_mask[:, :1])], 1)
            if use_cache:
                hidden = self._lm(plan_embeds, full_mask, cache=cache, position_ids=next_position).last_hidden_state[:, -1]
            else:
                full_embeds = torch.cat([full_embeds, plan_embeds], 1)
                hidden = self._lm(full_embeds, full_mask).last_hidden_state[:, -1]
            next_position = next_position + 1

        # 3. the image tokens, one at a time (KV cache, guidance, temperature, top-k / top-p)
        tokens = torch.zeros((n, steps), dtype=torch.long, device=embeds.device)
        for step in range(steps):
            logits = self.lmm.model.generation_head(hidden).float()
            logits = guide(logits[:n], logits[n:] if guided else None, guidance_scale)
            token = sample(filter_logits(logits, top_k, top_p), temperature, generators)
            tokens[:, step] = token
            if step == steps - 1:
                break
            inputs = self.image_inputs((token.repeat(2) if guided else token)[:, None], plan_embeds).to(embeds.dtype)
            full_mask = torch.cat([full_mask, torch.ones_like(full_mask[:, :1])], 1)
            if use_cache:
                hidden = self._lm(inputs, full_mask, cache=cache, position_ids=next_position + step).last_hidden_state[:, -1]
            else:
                full_embeds = torch.cat([full_embeds, inputs], 1)
                hidden = self._lm(full_embeds, full_mask).last_hidden_state[:, -1]
        return tokens.view(n_users, num_samples, steps), chosen.view(n_users, num_samples)

    @torch.no_grad()
    def decode(self, tokens):
        """Image tokens [..., grid*grid] -> pixels [..., 3, S, S] in [0, 1] (float32)."""
        flat = tokens.reshape(-1, tokens.shape[-1])
        size = self.backbone.image_size
        return vqlib.decode(self.vq, flat).view(*tokens.shape[:-1], 3, size, size)

    # ----------------------------------------------------------- checkpoints
    def saved_state_dict(self):
        """The parameters training may change (``saved_parameters``); the rest is rebuilt on load."""
        state = sharding.full_state_dict(self) if sharding.is_sharded(self) else self.state_dict()
        return {k: v for k, v in state.items() if k in self.saved_parameters}

    def base_info(self):
        return {"lmm_path": self.settings.lmm_path, "base_seed": self.settings.base_seed,
                "finetune": self.settings.finetune}


def count_parameters(module, trainable_only=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

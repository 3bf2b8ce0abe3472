"""GenDiff's model proper, independent of RecBole: history -> cross-attention tokens -> denoising UNet -> image.

``GenDiffCore`` owns the frozen image tokenizer, the catalogue's image tokens, the items' content representation
(:mod:`recbole_gen.model.content`, as GenLMM's), the diffusers UNet (and VAE) of :mod:`recbole_gen.model.denoiser`,
the denoising loss and the sampling loop. Everything is indexed by RecBole internal item ids (row 0 = padding);
the tokenizer's weights and the catalogue's tokens are artifacts handed in (recbole_gen/trainer/artifacts.py).

**Where it draws** (``diffusion_space``). ``latent`` (default): the image tokenizer's continuous latent, an item's
frozen code vectors ``[vq_embed_dim, vq_grid, vq_grid]`` (8x4x4: the tiny UNet trains in CPU minutes), scaled to
unit variance; a sample is snapped to its nearest codes (``snap_to_codes``) and decoded by the same VQ decoder as
GenLMM's tokens. With a VAE under ``diffusers_path`` the latent is the VAE's (latent diffusion, Stable Diffusion
style). ``pixel``: the item images themselves at ``image_size``, for a GPU.

**Condition.** The UNet cross-attends to a learned null token followed by the last ``history_len`` items' content
vectors plus a learned embedding of their recency; the tiny UNet also adds their mean to its timestep embedding.
An empty history (condition dropout in training) leaves the null token alone: the unconditional branch of
classifier-free guidance.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import JanusVQVAE

from recbole_gen.model import vq as vqlib
from recbole_gen.model.content import ItemContent
from recbole_gen.model.decoding import guide, row_generators
from recbole_gen.model.denoiser import load_pretrained, noise_schedule, sampler, tiny_unet


class GenDiffCore(ItemContent, nn.Module):
    def __init__(self, settings, item_num, content=None, item_pixels=None):
        """``settings``: :class:`~recbole_gen.model.gendiff_config.GenDiffSettings`; ``item_num`` rows (row 0 =
        padding); ``content``: ``{field: (LongTensor[item_num] value ids, vocabulary size)}``; ``item_pixels(ids) ->
        FloatTensor[len, 3, image_size, image_size]`` (read by the pixel and VAE spaces)."""
        super().__init__()
        s = self.settings = settings
        self.item_pixels = item_pixels
        self.item_tokens = vqlib.ItemTokens(item_num, s.vq_grid ** 2, s.vq_codebook_size, "GenDiff")
        with torch.random.fork_rng(devices=[]):  # the same initial weights whatever ran before
            torch.manual_seed(s.base_seed)
            self.vq = JanusVQVAE(vqlib.build_vq_config(s)).eval().requires_grad_(False)
            unet, self.vae, schedule = load_pretrained(s) if s.diffusers_path else (None, None, None)
            self.space, channels, size = self._space()
            self.unet = unet or tiny_unet(s, channels, size)
            if (self.unet.config.in_channels, self.unet.config.out_channels) != (channels, channels):
                raise ValueError(f"the UNet of diffusers_path takes {self.unet.config.in_channels} channels, the "
                                 f"{self.space} space has {channels}: set diffusion_space, or use a matching UNet")
            width = self.unet.config.cross_attention_dim
            self.init_content(s.vq_embed_dim * s.vq_grid ** 2, width, 1, content or {}, torch.float32)
            self.null_token = nn.Parameter(torch.randn(width) * 0.02)
            self.recency = nn.Parameter(torch.randn(s.history_len, width) * 0.02)
        if self.vae is not None:
            self.vae.eval().requires_grad_(False)
        self.schedule = schedule or noise_schedule(s, clip_sample=self.space == "pixel")
        self.shape = (channels, size, size)
        self.code_scale = math.sqrt(s.vq_embed_dim)  # unit code vectors of D entries: each entry ~ 1/sqrt(D)
        # what a checkpoint holds: everything training changes, and the catalogue-trained tokenizer
        self.saved_parameters = {n for n, p in self.named_parameters() if p.requires_grad or n.startswith("vq.")}

    def _space(self):
        """``(name, channels, size)`` of the samples the UNet draws."""
        s = self.settings
        if s.diffusion_space == "pixel":
            return "pixel", 3, s.image_size
        if self.vae is not None:
            return "vae", self.vae.config.latent_channels, s.image_size // 2 ** (len(self.vae.config.block_out_channels) - 1)
        return "tokenizer", s.vq_embed_dim, s.vq_grid

    # ----------------------------------------------------------------- artifacts handed in
    def set_item_tokens(self, tokens):
        """The catalogue's image tokens ``[item_num, grid*grid]`` under ``vq`` (row 0 unused)."""
        self.item_tokens.set(tokens)

    def tokens_of(self, items):
        return self.item_tokens.of(items, self.null_token.device)

    # ----------------------------------------------------------------- the space it draws in
    @torch.no_grad()
    def latents_of(self, items):
        """Items ``[N]`` -> their images as the UNet draws them ``[N, *shape]``."""
        if self.space == "tokenizer":
            return self.item_codes(items) * self.code_scale
        pixels = self.item_pixels(items).to(self.null_token.device) * 2 - 1
        if self.vae is None:
            return pixels
        return self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mean.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, samples):
        """Samples ``[N, *shape]`` -> ``(pixels [N, 3, S, S] in [0, 1], image tokens [N, grid*grid] or None)``: the
        tokenizer's latent is snapped to its nearest codes (``snap_to_codes``) or decoded as it is."""
        if self.space == "pixel":
            return samples.float().add(1).div(2).clamp(0, 1), None
        if self.space == "vae":
            images = self.vae.decode(samples.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            return images.float().add(1).div(2).clamp(0, 1), None
        if self.settings.snap_to_codes:
            tokens = vqlib.nearest_codes(self.vq, samples)
            return vqlib.decode(self.vq, tokens), tokens
        codes = F.normalize(samples.float(), dim=1)
        return self.vq.decoder(self.vq.post_quant_conv(codes)).float().add(1).div(2).clamp(0, 1), None

    # ----------------------------------------------------------------- condition
    def condition(self, histories):
        """Histories (item ids, oldest first) -> cross-attention tokens ``[B, 1 + history_len, width]`` and their
        mask ``[B, 1 + history_len]``: the null token, then the items right-aligned (the newest always in the last
        slot), each its content vector plus the embedding of its slot."""
        keep, device = self.settings.history_len, self.null_token.device
        items = torch.zeros(len(histories), keep, dtype=torch.long)
        mask = torch.zeros(len(histories), 1 + keep)
        mask[:, 0] = 1
        for row, history in enumerate(histories):
            recent = list(history)[-keep:] if keep else []
            if recent:
                items[row, keep - len(recent):] = torch.as_tensor(recent)
                mask[row, 1 + keep - len(recent):] = 1
        tokens = self.null_token.expand(len(histories), 1, -1)
        if keep:
            content = self.content_tokens(items.flatten().to(device)).view(len(histories), keep, -1) + self.recency
            tokens = torch.cat([tokens, content], 1)
        return tokens, mask.to(device)

    def predict(self, samples, timesteps, tokens, mask):
        """The UNet's prediction for noisy ``samples`` at ``timesteps`` under the condition ``(tokens, mask)``; a UNet
        with a projection class embedding (the tiny one) also gets the condition's mean token."""
        pooled = None
        if self.unet.config.class_embed_type == "projection":
            pooled = (tokens * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.unet(samples, timesteps, encoder_hidden_states=tokens, encoder_attention_mask=mask,
                         class_labels=pooled).sample

    # ------------------------------------------------------------------ loss
    def loss(self, histories, targets):
        """The denoising loss: MSE of the UNet's prediction (noise, velocity or the clean sample:
        ``prediction_type``) for the target items' images noised to uniformly drawn levels."""
        clean = self.latents_of(targets)
        noise = torch.randn_like(clean)
        steps = torch.randint(0, self.schedule.config.num_train_timesteps, (len(clean),), device=clean.device)
        predicted = self.predict(self.schedule.add_noise(clean, noise, steps), steps, *self.condition(histories))
        kind = self.schedule.config.prediction_type
        target = noise if kind == "epsilon" else clean if kind == "sample" else self.schedule.get_velocity(clean, noise, steps)
        return F.mse_loss(predicted.float(), target.float())

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def sample(self, histories, num_samples=1, seed=0, guidance_scale=0.0, num_inference_steps=25, sampler_name="ddim"):
        """Draw ``num_samples`` samples ``[B, n, *shape]`` per history. Each (history, sample) row starts from noise
        of its own generator (``generation_seed``, the history, the sample index) and the samplers are
        deterministic, so an image depends on nothing else. Guidance: ``cond + g * (cond - uncond)``."""
        rows = [h for h in histories for _ in range(num_samples)]
        generators = row_generators(seed, rows, [k for _ in histories for k in range(num_samples)])
        device = self.null_token.device
        scheduler = sampler(sampler_name, self.schedule, num_inference_steps, device)
        x = torch.stack([torch.randn(self.shape, generator=g) for g in generators]).to(device) * scheduler.init_noise_sigma
        guided = guidance_scale != 0
        tokens, mask = self.condition(rows + [[] for _ in rows] if guided else rows)
        for t in scheduler.timesteps:
            inputs = scheduler.scale_model_input(x, t)
            out = self.predict(torch.cat([inputs, inputs]) if guided else inputs, t, tokens, mask)
            x = scheduler.step(guide(out[:len(rows)], out[len(rows):] if guided else None, guidance_scale), t, x).prev_sample
        return x.view(len(histories), num_samples, *self.shape)

    # ----------------------------------------------------------- checkpoints
    def saved_state_dict(self):
        """The parameters training changes and the catalogue-trained tokenizer; the rest is rebuilt on load."""
        return {k: v for k, v in self.state_dict().items() if k in self.saved_parameters}

    def base_info(self):
        return {"diffusers_path": self.settings.diffusers_path, "base_seed": self.settings.base_seed}

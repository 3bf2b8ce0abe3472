"""GenLMM's backbone at Janus-Pro-1B size on a GPU: full fine-tuning steps under DDP and under FSDP2, and KV-cached
image generation at batch 64 with classifier-free guidance. One prepared script, run once per GPU session.

    python benchmarks/scale/gpu.py --out benchmarks/scale/gpu.json     # a GPU machine: nccl, Janus-Pro-1B sizes
    python benchmarks/scale/gpu.py --tiny --out /tmp/gpu-tiny.json     # the same code on a CPU (gloo), tiny sizes

The weights are random (built from a config: nothing is downloaded); speed and memory do not depend on their values.
Each setting builds a fresh model, so one setting's memory does not carry into the next.

* SFT step (GenLMM's layout, ``history_mode: semantic``, ``finetune: full``): ``--batch`` rows of ``--prompt`` prompt
  embeddings + the 576 image tokens of a 384 px target; loss = cross-entropy of the generation head on the image
  tokens; the language model and the generation head / embeddings / aligner train (AdamW), the vision tower and
  VQ model are frozen, as in ``_configure_training``. Compute in bf16 with float32 master weights:
  DDP under ``torch.autocast``; FSDP2 through :func:`recbole_gen.model.sharding.shard` (each decoder layer one unit,
  ``MixedPrecisionPolicy``), with and without gradient checkpointing.
* Generation (GenLMMCore.generate_tokens's loop, the same transformers calls): the bf16 model, ``--gen-batch`` users
  with guidance (twice the rows: conditional and unconditional), a ``DynamicCache``, 576 image tokens sampled one
  at a time (temperature 1), then the VQ decoder to pixels.

The GPU machine this was written for has torch and transformers but no RecBole, so nothing from recbole_gen is
imported except the sharding module, loaded from its file (it imports only torch).
"""
import argparse
import importlib.util
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, JanusConfig, JanusForConditionalGeneration, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sharding", ROOT / "recbole_gen" / "model" / "sharding.py")
sharding = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sharding)

# deepseek-ai/Janus-Pro-1B's published config: a 24-layer, 2048-wide Llama decoder, the SigLIP-L/16 vision tower at
# 384 px, the 16,384-code VQ tokenizer (24 x 24 = 576 tokens per image)
JANUS_PRO_1B = dict(text=dict(vocab_size=102400, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                              num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=16384),
                    vision=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=384, patch_size=16),
                    vq=dict(num_embeddings=16384, embed_dim=8, num_patches=24))
TINY = dict(text=dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=512),
            vision=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16),
            vq=dict(num_embeddings=64, embed_dim=8, num_patches=4, base_channels=32, channel_multiplier=[1, 1, 2, 2, 4],
                    num_res_blocks=1))
# finetune: full, minus the text head and the vision aligner, which this step does not use (GenLMM trains them only
# with a title loss / vision histories)
TRAINED = ("model.language_model", "model.generation_embeddings", "model.generation_aligner", "model.generation_head")


def janus_config(sizes):
    hidden = sizes["text"]["hidden_size"]
    vision = JanusVisionConfig(**sizes["vision"], projection_dim=hidden,
                               num_image_tokens=(sizes["vision"]["image_size"] // sizes["vision"]["patch_size"]) ** 2)
    vq = JanusVQVAEConfig(**sizes["vq"], image_token_embed_dim=hidden, projection_dim=hidden)
    return JanusConfig(text_config=LlamaConfig(**sizes["text"]).to_dict(), vision_config=vision.to_dict(),
                       vq_config=vq.to_dict(), tie_word_embeddings=False)


def build(config, device, dtype=torch.float32):
    with torch.device(device):
        model = JanusForConditionalGeneration(config).to(dtype)
    model.requires_grad_(False)
    for name in TRAINED:
        model.get_submodule(name).requires_grad_(True)
    return model


class SFTStep(nn.Module):
    """The SFT loss as a module's ``forward`` (GenLMMCore's shape: the LMM is a submodule, the root runs the loss)."""

    def __init__(self, lmm):
        super().__init__()
        self.lmm = lmm

    def forward(self, prompt_ids, tokens):
        embeds = torch.cat([self.lmm.get_input_embeddings()(prompt_ids),
                            self.lmm.prepare_embeddings_for_image_generation(tokens[:, :-1])], 1)
        hidden = self.lmm.model.language_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        logits = self.lmm.model.generation_head(hidden[:, prompt_ids.shape[1] - 1:]).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))


def enable_checkpointing(lmm):
    language_model = lmm.model.language_model
    if hasattr(language_model, "activation_checkpointing_enable"):
        language_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device):
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == "cuda" else None


def reset(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sft_steps(config, device, strategy, batch, prompt, warmup, steps, checkpointing=False):
    """Seconds per optimizer step and peak memory of one strategy (``ddp`` or ``fsdp``)."""
    reset(device)
    lmm = build(config, device)
    if checkpointing:
        enable_checkpointing(lmm)
    step = SFTStep(lmm).train()
    params = sum(p.numel() for p in step.parameters())
    trainable = sum(p.numel() for p in step.parameters() if p.requires_grad)
    if strategy == "fsdp":
        runner, autocast = sharding.shard(step, lmm.model.language_model.layers, torch.bfloat16), False
    else:
        ids = [device.index] if device.type == "cuda" else None
        runner, autocast = nn.parallel.DistributedDataParallel(step, device_ids=ids), True
    optimizer = torch.optim.AdamW([p for p in step.parameters() if p.requires_grad], lr=1e-5)
    generator = torch.Generator(device).manual_seed(0)
    codes, vocab = config.vq_config.num_embeddings, config.text_config.vocab_size
    grid = config.vq_config.num_patches
    times, losses = [], []
    for i in range(warmup + steps):
        prompt_ids = torch.randint(0, vocab, (batch, prompt), device=device, generator=generator)
        tokens = torch.randint(0, codes, (batch, grid * grid), device=device, generator=generator)
        sync(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = runner(prompt_ids, tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in step.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
        losses.append(round(loss.item(), 4))
    seconds = sorted(times)[len(times) // 2]
    result = {"strategy": strategy, "gradient_checkpointing": checkpointing, "batch": batch,
              "sequence": prompt + grid * grid, "parameters": params, "trainable": trainable,
              "median_step_s": round(seconds, 4), "step_s": [round(t, 4) for t in times],
              "target_tokens_per_s": round(batch * grid * grid / seconds, 1),
              "model_tflops_per_s": round(6 * trainable * batch * (prompt + grid * grid) / seconds / 1e12, 1),
              "peak_gib": peak_gib(device), "losses": losses}
    del runner, step, lmm, optimizer
    return result


def cache_argument(language_model):
    """The decoder's name for its KV cache: ``cache`` in this project's transformers, ``past_key_values`` before
    the rename (the GPU machine's transformers may be older)."""
    return "cache" if "cache" in inspect.signature(language_model.forward).parameters else "past_key_values"


@torch.no_grad()
def generation(config, device, users, prompt, guidance=5.0, rounds=2):
    """KV-cached generation of one image per user with guidance: tokens per second and the VQ decode's time."""
    reset(device)
    lmm = build(config, device, torch.bfloat16).eval()
    grid, vocab = config.vq_config.num_patches, config.text_config.vocab_size
    steps, rows = grid * grid, 2 * users
    generator = torch.Generator(device).manual_seed(0)
    results = []
    for _ in range(rounds):  # the first round warms up the kernels
        ids = torch.randint(0, vocab, (rows, prompt), device=device, generator=generator)
        mask = torch.ones_like(ids)
        mask[users:, :-8] = 0  # the unconditional rows: the instruction alone (left-padded), no history
        sync(device)
        started = time.perf_counter()
        cache = {cache_argument(lmm.model.language_model): DynamicCache(config=config.text_config)}
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = lmm.model.language_model(inputs_embeds=lmm.get_input_embeddings()(ids), attention_mask=mask,
                                          position_ids=position, use_cache=True, **cache).last_hidden_state[:, -1]
        next_position = position[:, -1:] + 1
        tokens = torch.zeros((users, steps), dtype=torch.long, device=device)
        for step in range(steps):
            logits = lmm.model.generation_head(hidden).float()
            logits = logits[users:] + guidance * (logits[:users] - logits[users:])
            token = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
            tokens[:, step] = token
            if step == steps - 1:
                break
            inputs = lmm.prepare_embeddings_for_image_generation(token.repeat(2)[:, None])
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            hidden = lmm.model.language_model(inputs_embeds=inputs, attention_mask=mask, position_ids=next_position + step,
                                              use_cache=True, **cache).last_hidden_state[:, -1]
        sync(device)
        generated = time.perf_counter()
        pixels = lmm.decode_image_tokens(tokens)
        sync(device)
        decoded = time.perf_counter()
        results.append({"users": users, "rows_with_guidance": rows, "prompt": prompt, "image_tokens": steps,
                        "generate_s": round(generated - started, 3),
                        "image_tokens_per_s": round(users * steps / (generated - started), 1),
                        "images_per_s": round(users / (decoded - started), 2), "decode_s": round(decoded - generated, 3),
                        "pixels": list(pixels.shape)})
    return {**results[-1], "peak_gib": peak_gib(device), "warmup_round": results[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU check of the code)")
    parser.add_argument("--batch", type=int, default=8, help="SFT rows per step")
    parser.add_argument("--prompt", type=int, default=128, help="prompt length (history + instruction), tokens")
    parser.add_argument("--gen-batch", type=int, default=64, help="users per generation batch (0: no generation)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    config = janus_config(TINY if args.tiny else JANUS_PRO_1B)
    report = {"command": "python " + " ".join(sys.argv),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "transformers": __import__("transformers").__version__,
              "backend": dist.get_backend(), "world_size": dist.get_world_size(), "sizes": "tiny" if args.tiny else "Janus-Pro-1B",
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "sft": [], "generation": None}
    for strategy, checkpointing in (("ddp", False), ("fsdp", False), ("fsdp", True)):
        try:
            report["sft"].append(sft_steps(config, device, strategy, args.batch, args.prompt, args.warmup, args.steps,
                                           checkpointing))
        except torch.OutOfMemoryError as error:
            report["sft"].append({"strategy": strategy, "gradient_checkpointing": checkpointing, "error": str(error)[:300]})
        print(json.dumps(report["sft"][-1]), flush=True)
    if args.gen_batch:
        report["generation"] = generation(config, device, args.gen_batch, args.prompt)
        print(json.dumps(report["generation"]), flush=True)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

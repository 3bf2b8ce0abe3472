"""Tiny-default GenLMM speed on this machine: SFT target image tokens/s, generation images/s with and
without the KV cache, VQ build time / reconstruction accuracy (from the cached VQ's metadata), peak RSS.

Run:  python benchmarks/genlmm/throughput.py --threads 1 --out benchmarks/genlmm/results
(the machine load, `os.getloadavg()`, is recorded before and after: the numbers scale with it).
"""
import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_fixture import catalogue, simulate_users  # noqa: E402

from recbole_gen.model.core import GenLMMCore, count_parameters  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="/tmp/genlmm_exp")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/genlmm/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    pixels, names, subgroup = catalogue(cache=Path(args.cache) / "emoji32.npy")
    start = time.time()
    core = GenLMMCore({}, pixels, names, cache_dir=Path(args.cache) / "cache")
    build = time.time() - start
    seqs = simulate_users(subgroup, n_users=args.batch * 2, seed=0).tolist()
    hist, target = [s[:5] for s in seqs], torch.tensor([s[5] for s in seqs])
    params = [p for p in core.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    core.train()
    for step in range(args.steps + 2):
        if step == 2:
            t0 = time.time()
        loss = core.loss(hist[: args.batch], target[: args.batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    sft = (time.time() - t0) / args.steps
    core.eval()
    gen = {}
    for cache in (True, False):
        t0 = time.time()
        core.generate_tokens(hist[: args.users], num_samples=args.samples, temperature=1.0, use_cache=cache)
        seconds = time.time() - t0
        gen["kv_cache" if cache else "no_cache"] = round(args.users * args.samples / seconds, 2)
    t0 = time.time()
    core.generate_tokens(hist[: args.users], num_samples=args.samples, guidance_scale=3.0, temperature=1.0)
    gen["kv_cache_guidance"] = round(args.users * args.samples / (time.time() - t0), 2)
    result = {
        "threads": args.threads, "params_total": count_parameters(core), "params_trainable": count_parameters(core, True),
        "model_build_seconds_with_cached_vq": round(build, 1),
        "sft_step_seconds": round(sft, 3), "sft_batch": args.batch,
        "sft_target_tokens_per_s": round(args.batch * core.num_image_tokens / sft, 1),
        "generation_images_per_s": gen, "generation_rows": args.users * args.samples,
        "vq": core.vq_info, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_before": load_before, "load_after": os.getloadavg(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

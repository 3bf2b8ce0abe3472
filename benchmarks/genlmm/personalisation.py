"""Does the tiny GenLMM learn taste? Train one design for a fixed CPU budget, then measure it.

Catalogue: the 3,655 Noto emoji at 32 px (benchmarks/genlmm/emoji_fixture.py). Users: simulated, each with
one favourite subgroup (p_stay of their items come from it). Held-out users are never trained on.

Measured on held-out users (history = last ``history_len`` items before the final one, target = final item):
  - image-token CE with the true history vs with histories shuffled across users;
  - the share of generated images whose nearest catalogue item (pixel cosine after subtracting the mean image)
    is in the target's subgroup, next to chance and to the majority-subgroup-of-history heuristic;
  - Hit@10 ranking the catalogue by the best cosine to any of the user's samples, next to the
    mean-history-feature nearest-neighbour baseline.

Run:  python benchmarks/genlmm/personalisation.py --design semantic --minutes 8 --out benchmarks/genlmm/results
"""
import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_fixture import catalogue, simulate_users  # noqa: E402

from recbole_gen.model.core import GenLMMCore, count_parameters  # noqa: E402
from recbole_gen.model.vq import centred_unit  # noqa: E402

DESIGNS = {
    "vq": {"history_mode": "vq"},  # history items as 64 VQ tokens each (DESIGN.md's negative result)
    "semantic": {"history_mode": "semantic", "history_tokens_per_item": 1},
    "semantic4": {"history_mode": "semantic", "history_tokens_per_item": 4},
}


def samples(seqs, history_len):
    hist, target = [], []
    for seq in seqs.tolist():
        for t in range(1, len(seq)):
            hist.append(seq[:t][-history_len:])
            target.append(seq[t])
    return hist, torch.tensor(target)


@torch.no_grad()
def heldout_ce(core, hist, target, batch=128):
    core.eval()
    out = [core.loss(hist[i:i + batch], target[i:i + batch], reduction="none") for i in range(0, len(hist), batch)]
    return torch.cat(out).mean().item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--design", default="semantic", choices=sorted(DESIGNS))
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--test-users", type=int, default=300)
    parser.add_argument("--p-stay", type=float, default=0.8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default="/tmp/genlmm_exp")
    parser.add_argument("--vq-steps", type=int, default=1500)
    parser.add_argument("--vq-batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--codebook", type=int, default=512)
    parser.add_argument("--pretrain-steps", type=int, default=0, help="catalogue pre-training steps before SFT (cached)")
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--pretrain-instruction", default="Draw this item.")
    parser.add_argument("--sampling", nargs="+", default=["1.0:0"], help="temperature:top_k pairs to evaluate")
    parser.add_argument("--out", default="benchmarks/genlmm/results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()

    pixels, names, subgroup = catalogue(cache=Path(args.cache) / "emoji32.npy")
    config = dict(DESIGNS[args.design], vq_train_steps=args.vq_steps, vq_batch_size=args.vq_batch,
                  lmm_image_size=args.image_size, vq_grid=args.grid, vq_codebook_size=args.codebook,
                  pretrain_steps=args.pretrain_steps, pretrain_learning_rate=args.pretrain_lr,
                  pretrain_instruction=args.pretrain_instruction)
    core = GenLMMCore(config, pixels, names, cache_dir=Path(args.cache) / "cache")
    seqs = simulate_users(subgroup, n_users=args.users, p_stay=args.p_stay, seed=0)
    train_seqs, test_seqs = seqs[: -args.test_users], seqs[-args.test_users:]
    hist, target = samples(train_seqs, core.settings["history_len"])
    test_hist = [s[:-1][-core.settings["history_len"]:] for s in test_seqs.tolist()]
    test_target = test_seqs[:, -1]

    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    start, step, log = time.time(), 0, []
    tokens_seen = 0
    core.train()
    while time.time() - start < args.minutes * 60:
        idx = torch.randint(len(hist), (args.batch,), generator=generator)
        drop = torch.rand(args.batch, generator=generator) < core.settings["cond_dropout"]
        batch_hist = [[] if d else hist[i] for i, d in zip(idx.tolist(), drop.tolist())]
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 100)
        loss = core.loss(batch_hist, target[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        tokens_seen += args.batch * core.num_image_tokens
        step += 1
        if step % 100 == 0:
            log.append((step, round(time.time() - start, 1), round(loss.item(), 4)))
            print(f"step {step} {time.time() - start:.0f}s loss {loss.item():.4f}", flush=True)
    train_seconds = time.time() - start

    core.eval()
    shuffled = [test_hist[i] for i in torch.randperm(len(test_hist), generator=torch.Generator().manual_seed(1)).tolist()]
    result = {
        "design": args.design, "config": config, "train_minutes": args.minutes, "steps": step,
        "pretrain": core.pretrain_info, "batch": args.batch,
        "train_samples": len(hist), "test_users": len(test_hist), "p_stay": args.p_stay,
        "params_total": count_parameters(core), "params_trainable": count_parameters(core, True),
        "sft_target_tokens_per_s": round(tokens_seen / train_seconds, 1),
        "heldout_ce_true": round(heldout_ce(core, test_hist, test_target), 4),
        "heldout_ce_shuffled": round(heldout_ce(core, shuffled, test_target), 4),
        "heldout_ce_empty": round(heldout_ce(core, [[] for _ in test_hist], test_target), 4),
        "vq": core.vq_info, "loss_log": log,
    }

    feats = centred_unit(pixels[1:], pixels[1:].mean(0))
    sub = subgroup[1:]
    tsub = subgroup[test_target]
    result["chance_subgroup"] = round(torch.stack([(sub == g).float().mean() for g in tsub]).mean().item(), 4)
    majority = torch.tensor([torch.mode(subgroup[torch.tensor(h)]).values.item() for h in test_hist])
    result["majority_history_subgroup"] = round((majority == tsub).float().mean().item(), 4)
    mean_hist = torch.stack([feats[torch.tensor(h) - 1].mean(0) for h in test_hist])
    top = (mean_hist @ feats.t()).topk(10, dim=1).indices + 1
    result["mean_history_nn_hit10"] = round((top == test_target[:, None]).any(1).float().mean().item(), 4)
    result["mean_history_nn_subgroup_top1"] = round((subgroup[top[:, 0]] == tsub).float().mean().item(), 4)

    gen_results = {}
    runs = [(g, float(p.split(":")[0]), int(p.split(":")[1])) for g in args.guidance for p in args.sampling]
    for g, temperature, top_k in runs:
        name = f"g={g},T={temperature},k={top_k}"
        t0 = time.time()
        imgs = []
        for i in range(0, len(test_hist), 64):
            tok = core.generate_tokens(test_hist[i:i + 64], num_samples=args.samples, guidance_scale=g, temperature=temperature,
                                       top_k=top_k, top_p=1.0, seed=0)
            imgs.append(core.decode(tok))
        gen_seconds = time.time() - t0
        imgs = torch.cat(imgs)  # [U, S, 3, H, W]
        if imgs.shape[-1] != pixels.shape[-1]:
            imgs = torch.nn.functional.interpolate(imgs.flatten(0, 1), size=pixels.shape[-2:], mode="bilinear").view(
                *imgs.shape[:3], *pixels.shape[-2:])
        q = centred_unit(imgs.flatten(0, 1), pixels[1:].mean(0)).view(len(test_hist), args.samples, -1)
        sims = torch.einsum("usd,nd->usn", q, feats)
        nearest = sims.argmax(-1) + 1  # [U, S]
        match = (subgroup[nearest] == tsub[:, None]).float().mean().item()
        scores = sims.amax(1)
        top = scores.topk(10, dim=1).indices + 1
        hit = (top == test_target[:, None]).any(1).float().mean().item()
        uniq = len(set(nearest.flatten().tolist()))
        gen_results[name] = {"subgroup_match": round(match, 4), "hit10": round(hit, 4),
                               "distinct_nearest_items": uniq, "images_per_s": round(imgs.shape[0] * args.samples / gen_seconds, 2)}
        print(name, gen_results[name], flush=True)
        if (g, temperature, top_k) == runs[-1]:
            from PIL import Image
            out = Path(args.out) / f"gallery-{args.design}"
            out.mkdir(parents=True, exist_ok=True)
            gallery = []
            for u in range(4):
                row = [pixels[i] for i in test_hist[u]] + [torch.ones_like(pixels[0])] + [pixels[test_target[u]]] + [torch.ones_like(pixels[0])] + list(imgs[u])
                strip = torch.cat(row, dim=-1).permute(1, 2, 0).mul(255).round().byte().numpy()
                path = out / f"user{u}.png"
                Image.fromarray(strip).resize((strip.shape[1] * 3, strip.shape[0] * 3), Image.NEAREST).save(path)
                gallery.append({"png": str(path), "history": [names[i] for i in test_hist[u]], "target": names[test_target[u]],
                                "nearest_of_samples": [names[i] for i in nearest[u].tolist()]})
            result["gallery"] = gallery
    result["generation"] = gen_results
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["load_before"] = load_start
    result["load_after"] = os.getloadavg()
    result["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"personalisation-{args.design}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("loss_log", "gallery")}, indent=1))


if __name__ == "__main__":
    main()

"""Stand-alone emoji catalogue + simulated users for GenLMM experiments and tests.

Used where the project's ``emoji-seq`` dataset (recbole_gen.data) is not needed: renders the
fully-qualified emoji of ``emoji-test.txt`` with Noto Color Emoji and simulates users whose
histories stay inside one or two subgroups (the same kind of taste ``emoji-seq`` simulates).
"""
from pathlib import Path

import numpy as np
import torch

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")


def read_emoji(limit=None):
    """(char, name, group, subgroup) of each fully-qualified emoji, as the dataset parses them."""
    from recbole_gen.data.emoji_seq import parse_emoji_test

    rows = [(e["char"], e["name"], e["group"], e["subgroup"]) for e in parse_emoji_test(EMOJI_TEST)]
    return rows[:limit] if limit else rows


def render(chars, size=32):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(FONT), 109)
    out = np.zeros((len(chars), 3, size, size), dtype=np.float32)
    for i, char in enumerate(chars):
        canvas = Image.new("RGBA", (136, 128), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
        box = canvas.getbbox() or (0, 0, 136, 128)
        canvas = canvas.crop(box)
        side = max(canvas.size)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
        square.paste(canvas, ((side - canvas.size[0]) // 2, (side - canvas.size[1]) // 2))
        white = Image.new("RGBA", square.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, square).convert("RGB").resize((size, size), Image.LANCZOS)
        out[i] = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return out


def catalogue(size=32, limit=None, cache=None):
    """(pixels [N+1,3,S,S] with row 0 = padding, names list (row 0 = ''), subgroup ids [N+1])."""
    rows = read_emoji(limit)
    cache = Path(cache) if cache else None
    if cache and cache.is_file():
        pixels = np.load(cache)
    else:
        pixels = render([r[0] for r in rows], size)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, pixels)
    pixels = np.concatenate([np.zeros((1, 3, size, size), np.float32), pixels])
    subgroups = sorted({r[3] for r in rows})
    sub = np.array([-1] + [subgroups.index(r[3]) for r in rows])
    names = [""] + [r[1] for r in rows]
    return torch.from_numpy(pixels), names, torch.from_numpy(sub)


def simulate_users(subgroup, n_users=3000, length=12, p_stay=0.9, seed=0):
    """Sequences of item ids (1-based): each user picks one favourite subgroup; each next item is from
    it with probability ``p_stay`` (else from a random subgroup). Returns LongTensor [n_users, length]."""
    rng = np.random.default_rng(seed)
    sub = subgroup.numpy()
    members = {}
    for item in range(1, len(sub)):
        members.setdefault(int(sub[item]), []).append(item)
    groups = [g for g, m in members.items() if len(m) >= 5]
    seqs = np.zeros((n_users, length), dtype=np.int64)
    for u in range(n_users):
        fav = groups[rng.integers(len(groups))]
        for t in range(length):
            g = fav if rng.random() < p_stay else groups[rng.integers(len(groups))]
            seqs[u, t] = members[g][rng.integers(len(members[g]))]
    return torch.from_numpy(seqs)

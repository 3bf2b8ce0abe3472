"""``emoji-seq``: the built-in image dataset. Real item images (Noto Color Emoji), simulated users. ``emoji-pop``:
the same catalogue with users who behave differently (:data:`VARIANTS`: more popularity-driven, less category
continuity), the second catalogue every modelling choice is checked on.

Items: every fully-qualified emoji of ``emoji-test.txt`` (3,655 in Unicode 15.1's file, 9 groups,
98 subgroups with items), rendered in colour with Pillow and saved as ``images/<token>.png``
(``emoji_seq_image_px``, default 64 px). The item token is the emoji's code points joined by
``-`` (``1F600``, ``1F468-200D-1F469-200D-1F467``).

Users come from a seeded simulator (all constants in :data:`SIMULATOR`, saved with the data):

- taste: each user has 1 home group (2 with probability ``p_two_groups``) and 2-5 favourite
  subgroups, each drawn from the home groups with probability ``p_home``; Dirichlet weights over
  the favourites plus ``explore`` mass spread uniformly over all subgroups;
- long-term drift: a second taste vector (each favourite replaced with probability ``p_replace``,
  at least one) that the user moves to linearly over their sequence:
  ``theta(t) = (1 - t/(L-1)) * theta_start + t/(L-1) * theta_end``;
- short-term continuity: with probability ``rho`` the next item's subgroup is the previous item's;
  otherwise it is drawn from ``theta(t)``;
- popularity bias: within a subgroup an item is drawn proportionally to a log-normal popularity
  (skin-tone variants get ``skin_tone_factor`` of it), never an item the user already has;
- global popularity (``p_global``, 0 in emoji-seq): with that probability the next item is instead drawn from the
  whole catalogue by popularity, whatever the user's taste;
- timestamps: a random start within a year, then exponential gaps (``mean_gap_hours``).

The ground truth (both taste vectors of every user, every sequence, ``rho``) is saved as
``emoji-seq.truth.npz`` next to the atomic files; :class:`EmojiSeqTruth` loads it and gives the
oracle: the simulator's distribution over subgroups for a user's item at a position, and the
utility of an image given its subgroup (probabilities). The same utilities are written as the
dataset's judge file (``emoji-seq.judge.npz``, :mod:`recbole_gen.data.judge`), which OracleUtility reads.
"""
import json
import logging
import re
import time
import unicodedata
from pathlib import Path

import numpy as np

from recbole_gen.data.builtin import DatasetNotFoundError, register_dataset
from recbole_gen.data.judge import JudgeFile
from recbole_gen.files import atomic_write_bytes

logger = logging.getLogger(__name__)

NAME = "emoji-seq"
#: the built-in emoji datasets: each one's simulator settings that differ from :data:`SIMULATOR`
VARIANTS = {NAME: {}, "emoji-pop": {"rho": 0.1, "p_global": 0.5, "popularity_sigma": 1.5}}
INSTALL_HINT = "install them with `apt-get install fonts-noto-color-emoji unicode-data`"

#: build options (config keys; defaults in properties/dataset/emoji-seq.yaml) recorded in emoji-seq.sim.json
BUILD_OPTIONS = ("emoji_seq_users", "emoji_seq_seed", "emoji_seq_image_px")
SIMULATOR = {
    "version": 1,
    "p_two_groups": 0.35,
    "p_home": 0.85,
    "n_favourites": [2, 5],
    "dirichlet": 1.0,
    "explore": 0.05,
    "p_replace": 0.5,
    "rho": 0.45,
    "p_global": 0.0,
    "popularity_sigma": 1.0,
    "skin_tone_factor": 0.25,
    "length_median": 10,
    "length_sigma": 0.5,
    "length_min": 5,
    "length_max": 60,
    "start_time": 1_600_000_000,
    "start_spread_days": 365,
    "mean_gap_hours": 20.0,
}


class EmojiResourceError(DatasetNotFoundError):
    """The emoji font or ``emoji-test.txt`` is not installed."""


def _options(config):
    """The build options of ``config`` as plain ints (they are recorded, and compared with a built folder)."""
    return {key: int(config[key]) for key in BUILD_OPTIONS}


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ----------------------------------------------------------------------------- catalogue


def parse_emoji_test(path):
    """Fully-qualified emoji of ``emoji-test.txt``: list of dicts (token, char, name, group, subgroup)."""
    path = Path(path)
    if not path.is_file():
        raise EmojiResourceError(f"{path} not found: emoji-seq needs Unicode's emoji-test.txt; {INSTALL_HINT} "
                                 f"(or set emoji_test_file to a copy)")
    items, group, subgroup = [], None, None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            codes, _, rest = line.partition(";")
            status, _, comment = rest.partition("#")
            if status.strip() != "fully-qualified":
                continue
            # comment: " 😀 E1.0 grinning face"
            parts = comment.strip().split(" ", 2)
            cps = codes.split()
            items.append({
                "token": "-".join(cps),
                "char": "".join(chr(int(c, 16)) for c in cps),
                "name": parts[2] if len(parts) == 3 else parts[-1],
                "group": group,
                "subgroup": subgroup,
            })
    if not items:
        raise EmojiResourceError(f"{path} lists no fully-qualified emoji; is it Unicode's emoji-test.txt?")
    return items


def render_emoji(chars, px, font_path):
    """Render emoji strings in colour on white: list of RGB ``PIL.Image`` of ``px`` x ``px``."""
    from PIL import Image, ImageDraw, ImageFont

    if not Path(font_path).is_file():
        raise EmojiResourceError(f"{font_path} not found: emoji-seq needs the Noto Color Emoji font; {INSTALL_HINT} "
                                 f"(or set emoji_font_file)")
    font = ImageFont.truetype(str(font_path), 109)  # the bitmap strike of the colour font
    out = []
    for ch in chars:
        canvas = Image.new("RGBA", (136, 136), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((0, 4), ch, font=font, embedded_color=True)
        white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, canvas).convert("RGB")
        out.append(img.resize((px, px), Image.Resampling.LANCZOS))
    return out


# ----------------------------------------------------------------------------- simulator


def simulate(items, n_users, seed, sim=SIMULATOR):
    """Run the user simulator. Returns a dict of arrays (the ground truth) and the interactions."""
    rng = np.random.default_rng(seed)
    subgroups = list(dict.fromkeys(it["subgroup"] for it in items))
    groups = list(dict.fromkeys(it["group"] for it in items))
    sub_index = {s: k for k, s in enumerate(subgroups)}
    sub_group = np.array([groups.index(next(it["group"] for it in items if it["subgroup"] == s)) for s in subgroups])
    item_sub = np.array([sub_index[it["subgroup"]] for it in items])
    n_sub, n_items = len(subgroups), len(items)

    popularity = rng.lognormal(0.0, sim["popularity_sigma"], n_items)
    popularity[["skin tone" in it["name"] for it in items]] *= sim["skin_tone_factor"]
    members = [np.flatnonzero(item_sub == s) for s in range(n_sub)]
    sub_pop = np.array([popularity[m].sum() for m in members])

    def draw_favourites(home, exclude=()):
        k = int(rng.integers(sim["n_favourites"][0], sim["n_favourites"][1] + 1))
        chosen = []
        while len(chosen) < k:
            in_home = np.isin(sub_group, home) if rng.random() < sim["p_home"] else np.ones(n_sub, bool)
            w = np.where(in_home, sub_pop, 0.0)
            w[list(chosen) + list(exclude)] = 0.0
            if w.sum() == 0:  # home groups used up: any subgroup not taken yet
                w = np.where(np.isin(np.arange(n_sub), list(chosen) + list(exclude)), 0.0, sub_pop)
            chosen.append(int(rng.choice(n_sub, p=w / w.sum())))
        return chosen

    def taste(favourites):
        theta = np.full(n_sub, sim["explore"] / n_sub)
        theta[favourites] += (1 - sim["explore"]) * rng.dirichlet(np.full(len(favourites), sim["dirichlet"]))
        return theta

    theta_start = np.zeros((n_users, n_sub))
    theta_end = np.zeros((n_users, n_sub))
    home_groups = np.full((n_users, 2), -1)
    seq_items, offsets, stamps = [], [0], []
    for u in range(n_users):
        n_home = 2 if rng.random() < sim["p_two_groups"] else 1
        home = rng.choice(len(groups), size=n_home, replace=False, p=np.bincount(sub_group) / n_sub)
        home_groups[u, :n_home] = home
        fav = draw_favourites(home)
        theta_start[u] = taste(fav)
        replace = rng.random(len(fav)) < sim["p_replace"]
        if not replace.any():
            replace[rng.integers(len(fav))] = True
        new = draw_favourites(home, exclude=fav)[: int(replace.sum())]
        fav_end = [f for f, r in zip(fav, replace) if not r] + new
        theta_end[u] = taste(fav_end)

        length = int(np.clip(round(sim["length_median"] * rng.lognormal(0, sim["length_sigma"])),
                             sim["length_min"], sim["length_max"]))
        seen = set()
        prev_sub = -1
        t_now = sim["start_time"] + rng.uniform(0, sim["start_spread_days"] * 86400)
        for t in range(length):
            frac = t / (length - 1)
            theta = (1 - frac) * theta_start[u] + frac * theta_end[u]
            if sim["p_global"] and rng.random() < sim["p_global"]:  # (no draw at 0: emoji-seq's stream is unchanged)
                w = popularity.copy()
                w[list(seen)] = 0.0
                item = int(rng.choice(n_items, p=w / w.sum()))
                s = int(item_sub[item])
            else:
                s = prev_sub if (t > 0 and rng.random() < sim["rho"]) else int(rng.choice(n_sub, p=theta))
                cand = [i for i in members[s] if i not in seen]
                while not cand:  # subgroup used up: draw another from the taste
                    s = int(rng.choice(n_sub, p=theta))
                    cand = [i for i in members[s] if i not in seen]
                w = popularity[cand]
                item = int(cand[rng.choice(len(cand), p=w / w.sum())])
            seen.add(item)
            seq_items.append(item)
            prev_sub = s
            t_now += 60 + rng.exponential(sim["mean_gap_hours"] * 3600)
            stamps.append(int(t_now))
        offsets.append(len(seq_items))

    truth = {
        "users": np.array([f"u{u + 1:05d}" for u in range(n_users)]),
        "items": np.array([it["token"] for it in items]),
        "subgroups": np.array(subgroups),
        "groups": np.array(groups),
        "item_subgroup": item_sub.astype(np.int16),
        "subgroup_group": sub_group.astype(np.int16),
        "item_popularity": popularity.astype(np.float32),
        "home_groups": home_groups.astype(np.int16),
        "theta_start": theta_start.astype(np.float32),
        "theta_end": theta_end.astype(np.float32),
        "seq_offsets": np.array(offsets, dtype=np.int64),
        "seq_items": np.array(seq_items, dtype=np.int32),
        "timestamps": np.array(stamps, dtype=np.int64),
        "rho": np.array(sim["rho"]),
        "p_global": np.array(sim["p_global"]),
        "subgroup_popularity": (sub_pop / sub_pop.sum()).astype(np.float32),
    }
    return truth


# ----------------------------------------------------------------------------- builder


def check_built(folder, config):
    """A warning when the folder on disk was built with other options than ``config`` asks for, or before emoji-seq
    wrote its judge file."""
    name = config["dataset"]
    if not (Path(folder) / f"{name}.judge.npz").is_file():
        return (f"{folder} has no {name}.judge.npz (built by an earlier recbole-gen), so OracleUtility is not "
                f"defined there: rebuild it with `recbole-gen make-dataset {name} --force`")
    try:
        built = json.loads((Path(folder) / f"{name}.sim.json").read_text())["options"]
    except (OSError, ValueError, KeyError):
        return None
    wanted = _options(config)
    if wanted != built:
        return (f"{folder} was built with {built}, the config asks for {wanted}; using the files on disk "
                f"(rebuild with `recbole-gen make-dataset {name} --force`, or point data_path elsewhere)")
    return None


def build_emoji_dataset(folder, config):
    """Write an emoji dataset's (``config['dataset']``: a name of :data:`VARIANTS`) atomic files, images and ground
    truth into ``folder``."""
    name = config["dataset"]
    sim = {**SIMULATOR, **VARIANTS[name]}
    opts = _options(config)
    start = time.time()
    folder = Path(folder)
    items = parse_emoji_test(config["emoji_test_file"])
    px = opts["emoji_seq_image_px"]
    images = render_emoji([it["char"] for it in items], px, config["emoji_font_file"])
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for it, img in zip(items, images):
        img.save(folder / "images" / f"{it['token']}.png", format="PNG")

    item_lines = ["item_id:token\tname:token_seq\tgroup:token\tsubgroup:token\timage:token"]
    for it in items:
        item_name = " ".join(unicodedata.normalize("NFC", it["name"]).split())
        item_lines.append(f"{it['token']}\t{item_name}\t{slug(it['group'])}\t{it['subgroup']}\timages/{it['token']}.png")
    (folder / f"{name}.item").write_text("\n".join(item_lines) + "\n", encoding="utf-8")

    truth = simulate(items, opts["emoji_seq_users"], opts["emoji_seq_seed"], sim)
    inter_lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    off, seq, ts, users, tokens = (truth["seq_offsets"], truth["seq_items"], truth["timestamps"],
                                   truth["users"], truth["items"])
    for u, user in enumerate(users):
        for k in range(off[u], off[u + 1]):
            inter_lines.append(f"{user}\t{tokens[seq[k]]}\t{ts[k]}")
    (folder / f"{name}.inter").write_text("\n".join(inter_lines) + "\n", encoding="utf-8")

    with open(folder / f"{name}.truth.npz", "wb") as f:
        np.savez_compressed(f, **truth)
    judge_file(EmojiSeqTruth(truth)).save(folder / f"{name}.judge.npz")
    meta = {
        "dataset": name,
        "options": opts,
        "simulator": sim,
        "users": int(len(users)),
        "items": int(len(items)),
        "interactions": int(len(seq)),
        "groups": [str(g) for g in truth["groups"]],
        "subgroups": int(len(truth["subgroups"])),
        "truth_file": f"{name}.truth.npz (load with recbole_gen.data.emoji_seq.EmojiSeqTruth)",
        "judge_file": f"{name}.judge.npz (OracleUtility's utilities per user, position and subgroup)",
    }
    atomic_write_bytes(folder / f"{name}.sim.json", (json.dumps(meta, indent=1) + "\n").encode())
    logger.info(f"built {name}: {len(users)} users, {len(items)} items, {len(seq)} interactions "
                f"in {time.time() - start:.1f}s")


for _name in VARIANTS:
    register_dataset(_name, check=check_built)(build_emoji_dataset)


# ----------------------------------------------------------------------------- oracle


class EmojiSeqTruth:
    """The simulator's ground truth for one built ``emoji-seq`` folder, and its oracle utility.

    Positions index a user's chronological sequence from 0; ``position == len(sequence)`` is the
    next, unobserved item. Subgroups are given as ids (``subgroup_index(name)``) or as a vector of
    probabilities over ``subgroups``.
    """

    def __init__(self, arrays):
        self.users = [str(u) for u in arrays["users"]]
        self.items = [str(i) for i in arrays["items"]]
        self.subgroups = [str(s) for s in arrays["subgroups"]]
        self.groups = [str(g) for g in arrays["groups"]]
        self.item_subgroups = arrays["item_subgroup"].astype(np.int64)
        self.subgroup_group = arrays["subgroup_group"].astype(np.int64)
        self.theta_start = arrays["theta_start"].astype(np.float64)
        self.theta_end = arrays["theta_end"].astype(np.float64)
        self.offsets = arrays["seq_offsets"]
        self.seq_items = arrays["seq_items"].astype(np.int64)
        self.rho = float(arrays["rho"])
        self.p_global = float(arrays.get("p_global", 0.0))  # folders built before emoji-pop existed have neither
        self.subgroup_popularity = np.asarray(arrays.get("subgroup_popularity", np.zeros(len(self.subgroups))), np.float64)
        self._user = {u: k for k, u in enumerate(self.users)}
        self._item = {t: k for k, t in enumerate(self.items)}
        self._sub = {s: k for k, s in enumerate(self.subgroups)}

    @classmethod
    def load(cls, folder_or_config):
        """From a dataset folder (``.../emoji-seq``, ``.../emoji-pop``) or a RecBole config (its ``data_path``)."""
        try:
            folder = Path(folder_or_config["data_path"])
        except (TypeError, KeyError, IndexError):
            folder = Path(folder_or_config)
        path = folder / f"{folder.name}.truth.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build the dataset with `recbole-gen make-dataset {folder.name}`")
        with np.load(path, allow_pickle=False) as data:
            return cls({k: data[k] for k in data.files})

    def _u(self, user):
        try:
            return self._user[str(user)]
        except KeyError:
            raise KeyError(f"unknown emoji-seq user '{user}' (tokens look like {self.users[0]})") from None

    def subgroup_index(self, name):
        return self._sub[name]

    def item_subgroup(self, item_token):
        """Subgroup id of a catalogue item token."""
        return int(self.item_subgroups[self._item[str(item_token)]])

    def sequence(self, user):
        """The user's item tokens, in time order."""
        u = self._u(user)
        return [self.items[i] for i in self.seq_items[self.offsets[u]:self.offsets[u + 1]]]

    def _check(self, user, position):
        u = self._u(user)
        length = int(self.offsets[u + 1] - self.offsets[u])
        if not 0 <= position <= length:
            raise IndexError(f"position {position} outside 0..{length} for user '{user}'")
        return u, length

    def preference(self, user, position):
        """Long-term taste ``theta(t)`` over subgroups at ``position`` (drift included)."""
        u, length = self._check(user, position)
        frac = min(position / max(length - 1, 1), 1.0)
        return (1 - frac) * self.theta_start[u] + frac * self.theta_end[u]

    def next_subgroup_distribution(self, user, position):
        """The simulator's distribution of the subgroup of the user's item at ``position`` (continuity with the item at
        ``position - 1`` included; with ``p_global``, the catalogue's popularity share of each subgroup, which leaves
        out that the user's own items are never drawn again)."""
        u, _ = self._check(user, position)
        q = self.preference(user, position)
        if position > 0:
            q = (1 - self.rho) * q
            q[self.item_subgroups[self.seq_items[self.offsets[u] + position - 1]]] += self.rho
        return (1 - self.p_global) * q + self.p_global * self.subgroup_popularity

    def utility(self, user, position, subgroup):
        """How much the simulated user would like an image at ``position``, in [0, 1].

        ``subgroup``: a subgroup id, name, or a probability vector over ``subgroups`` (e.g. a
        classifier's output for a generated image). The utility is the simulator's probability of
        the image's subgroup, divided by that of the user's most likely subgroup at that step:
        1 = the best possible subgroup, ~0 = a subgroup the user never picks.
        """
        q = self.next_subgroup_distribution(user, position)
        if isinstance(subgroup, str):
            subgroup = self._sub[subgroup]
        if np.ndim(subgroup) == 0:
            value = q[int(subgroup)]
        else:
            p = np.asarray(subgroup, dtype=np.float64)
            if p.shape != q.shape:
                raise ValueError(f"subgroup probabilities must have length {len(q)}, got {p.shape}")
            value = float(p @ q) / max(p.sum(), 1e-12)
        return float(value / q.max())


def judge_file(truth):
    """The simulator's utilities as a judge file (:mod:`recbole_gen.data.judge`): for every user and position
    ``0 .. len`` (the last: the next, unobserved item), each subgroup's :meth:`EmojiSeqTruth.utility`; a repeat is
    worth 0, since no simulated user takes an item twice."""
    rows = []
    for user in truth.users:
        for position in range(len(truth.sequence(user)) + 1):
            q = truth.next_subgroup_distribution(user, position)
            rows.append(q / q.max())
    lengths = np.diff(truth.offsets) + 1
    return JudgeFile(field="subgroup", values=np.array(truth.subgroups), users=np.array(truth.users),
                     offsets=np.r_[0, np.cumsum(lengths)], utility=np.array(rows, dtype=np.float32), repeat_utility=0.0)

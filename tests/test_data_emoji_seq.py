"""The built-in emoji-seq: round trip through RecBole, determinism, the simulator's claims, SASRec."""
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recbole.data import data_preparation

from recbole_gen.cli import main as recbole_gen_main, run_recbole_main
from recbole_gen.config import Config
from recbole_gen.data import ItemImageStore, build_dataset, create_dataset
from recbole_gen.data.emoji_seq import EmojiResourceError, EmojiSeqTruth, parse_emoji_test
from recbole_gen.data.judge import load_judge

USERS = 300
N_EMOJI = 3655


def config_for(parent, **overrides):
    return Config(model="SASRec", dataset="emoji-seq",
                  config_dict={"data_path": str(parent), "emoji_seq_users": USERS, "show_progress": False, **overrides})


def digest_tree(folder):
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".cache" not in p.parts}


def test_round_trip_through_recbole(emoji_seq_small):
    folder = emoji_seq_small / "emoji-seq"
    n_inter = len((folder / "emoji-seq.inter").read_text().splitlines()) - 1
    config = config_for(emoji_seq_small, image_size=32)
    dataset = create_dataset(config, images=True)
    assert dataset.user_num == USERS + 1 and dataset.item_num == N_EMOJI + 1 and dataset.inter_num == n_inter
    train, valid, test = data_preparation(config, dataset)
    # leave-one-out by time (sequential quick start): every position after a user's first item is a
    # target; the last is the test target, the one before it validates, the rest train
    assert len(valid.dataset) == USERS and len(test.dataset) == USERS
    assert len(train.dataset) == n_inter - 3 * USERS

    pngs = sorted((folder / "images").glob("*.png"))
    assert len(pngs) == N_EMOJI
    with Image.open(pngs[0]) as img:
        assert img.size == (64, 64) and img.mode == "RGB"
    store = dataset.image_store
    pixels = store.pixels()
    assert pixels.shape == (N_EMOJI + 1, 3, 32, 32) and bool(store.has_image[1:].all())
    assert pixels[1:].flatten(1).std(dim=1).min() > 0.01  # no blank renders
    assert store.item_texts()[dataset.token2id("item_id", "1F600")] == "grinning face"
    # a 64 px store from the same files works too
    config["image_size"] = 64
    tokens = dataset.id2token("item_id", np.arange(dataset.item_num))
    assert ItemImageStore.from_tokens(config, tokens).pixels().shape == (N_EMOJI + 1, 3, 64, 64)


def fake_render(chars, px, font):
    return [Image.new("RGB", (px, px), (k % 256, 0, 0)) for k in range(len(chars))]


def test_first_use_builds_it_and_sasrec_trains_an_epoch(emoji_seq_small, tmp_path, monkeypatch):
    """``run_recbole --dataset=emoji-seq`` on an empty data_path builds the dataset (atomic files and
    ground truth byte-identical to another build with the same seed) and SASRec trains and tests on it.
    Rendering is stubbed here to save time; the next test checks the renders are deterministic."""
    import recbole_gen.data.emoji_seq as emoji_seq

    monkeypatch.setattr(emoji_seq, "render_emoji", fake_render)
    data = tmp_path / "fresh"
    rc = run_recbole_main([
        "--model=SASRec", "--dataset=emoji-seq", f"--data_path={data}", f"--emoji_seq_users={USERS}",
        "--epochs=1", "--train_batch_size=512", "--eval_batch_size=512", "--hidden_size=16", "--inner_size=32",
        "--n_layers=1", "--n_heads=1", "--MAX_ITEM_LIST_LENGTH=20", "--show_progress=False", "--use_gpu=False",
    ])
    assert rc == 0
    for name in ("emoji-seq.inter", "emoji-seq.item", "emoji-seq.truth.npz", "emoji-seq.sim.json"):
        assert (data / "emoji-seq" / name).read_bytes() == (emoji_seq_small / "emoji-seq" / name).read_bytes(), name
    log = next(Path("log/SASRec").glob("SASRec-emoji-seq-*.log")).read_text()
    hit = float(re.search(r"test result.*'hit@10', (?:np\.float64\()?([0-9.]+)", log).group(1))
    assert 0.0 <= hit <= 1.0


def test_renders_are_deterministic(emoji_seq_small):
    import io

    from recbole_gen.data.emoji_seq import render_emoji

    config = config_for(emoji_seq_small)
    items = parse_emoji_test(config["emoji_test_file"])[::100]
    for item, img in zip(items, render_emoji([it["char"] for it in items], 64, config["emoji_font_file"])):
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        assert buffer.getvalue() == (emoji_seq_small / "emoji-seq" / "images" / f"{item['token']}.png").read_bytes()


def test_another_seed_gives_other_interactions(emoji_seq_small, tmp_path, monkeypatch):
    import recbole_gen.data.emoji_seq as emoji_seq

    monkeypatch.setattr(emoji_seq, "render_emoji", fake_render)
    build_dataset("emoji-seq", tmp_path / "other" / "emoji-seq", config_for(tmp_path / "other", emoji_seq_seed=7))
    other = (tmp_path / "other" / "emoji-seq" / "emoji-seq.inter").read_bytes()
    assert other != (emoji_seq_small / "emoji-seq" / "emoji-seq.inter").read_bytes()


def test_emoji_pop_users_follow_popularity_more_and_their_last_category_less(emoji_seq_small, tmp_path, monkeypatch):
    """The second built-in catalogue: the same items, users drawn with global popularity half of the time and less
    continuity; its judge file says so too."""
    import recbole_gen.data.emoji_seq as emoji_seq

    monkeypatch.setattr(emoji_seq, "render_emoji", fake_render)
    config = Config(model="SASRec", dataset="emoji-pop", config_dict={"data_path": str(tmp_path), "emoji_seq_users": USERS})
    build_dataset("emoji-pop", tmp_path / "emoji-pop", config)
    seq, pop = EmojiSeqTruth.load(emoji_seq_small / "emoji-seq"), EmojiSeqTruth.load(tmp_path / "emoji-pop")

    def continuity(truth):
        return np.mean([s[t] == s[t - 1] for s in sequences(truth) for t in range(1, len(s))])

    def head_share(truth):  # interactions on the 50 most taken items
        return np.sort(np.bincount(truth.seq_items, minlength=len(truth.items)))[::-1][:50].sum() / len(truth.seq_items)

    # measured at 300 users: continuity 0.13 vs 0.62, head share 0.23 vs 0.13
    assert continuity(pop) < continuity(seq) - 0.2 and head_share(pop) > 1.5 * head_share(seq)
    assert pop.p_global == 0.5 and seq.p_global == 0.0
    user = pop.users[0]
    q = pop.next_subgroup_distribution(user, 3)
    assert q.sum() == pytest.approx(1.0) and q.min() >= 0.5 * pop.subgroup_popularity.min()
    assert (tmp_path / "emoji-pop" / "emoji-pop.judge.npz").is_file()


def test_make_dataset_is_idempotent(emoji_seq_small, capsys):
    before = digest_tree(emoji_seq_small / "emoji-seq")
    assert recbole_gen_main(["make-dataset", "emoji-seq", "--data_path", str(emoji_seq_small)]) == 0
    assert "already exists" in capsys.readouterr().out
    assert digest_tree(emoji_seq_small / "emoji-seq") == before


def sequences(truth):
    return [truth.item_subgroups[truth.seq_items[a:b]] for a, b in zip(truth.offsets[:-1], truth.offsets[1:])]


def test_next_item_shares_subgroup_with_recent_items_far_above_chance(emoji_seq_small):
    truth = EmojiSeqTruth.load(emoji_seq_small / "emoji-seq")
    seqs = sequences(truth)
    share = np.mean([s[t] in s[max(0, t - 3):t] for s in seqs for t in range(1, len(s))])
    marginal = np.bincount(np.concatenate(seqs), minlength=len(truth.subgroups)) / sum(map(len, seqs))
    chance_one = float(marginal @ marginal)  # two independent interactions share a subgroup
    assert chance_one < 0.05 and share > 0.5 > 10 * chance_one


def test_preference_drift_is_measurable_between_early_and_late_parts(emoji_seq_small):
    truth = EmojiSeqTruth.load(emoji_seq_small / "emoji-seq")
    rng = np.random.default_rng(0)
    n_sub = len(truth.subgroups)

    def early_late_distance(s):
        third = len(s) // 3
        early = np.bincount(s[:third], minlength=n_sub) / third
        late = np.bincount(s[-third:], minlength=n_sub) / third
        return 0.5 * np.abs(early - late).sum()

    seqs = [s for s in sequences(truth) if len(s) >= 9]
    in_order = np.mean([early_late_distance(s) for s in seqs])
    shuffled = np.mean([early_late_distance(rng.permutation(s)) for s in seqs])
    assert in_order > shuffled + 0.1
    # the ground truth says the same: late items score higher on the late taste than the early one
    late_items = [(u, len(s) - 1, s[-1]) for u, s in zip(truth.users, sequences(truth))]
    end = np.mean([truth.theta_end[truth._u(u)][g] for u, _, g in late_items])
    start = np.mean([truth.theta_start[truth._u(u)][g] for u, _, g in late_items])
    assert end > 1.5 * start


def test_oracle_utility_prefers_the_true_next_item(emoji_seq_small):
    truth = EmojiSeqTruth.load(emoji_seq_small / "emoji-seq")
    rng = np.random.default_rng(0)
    true_u, random_u = [], []
    for user in truth.users[:100]:
        seq = truth.sequence(user)
        for t in range(1, len(seq)):
            true_u.append(truth.utility(user, t, truth.item_subgroup(seq[t])))
            random_u.append(truth.utility(user, t, int(rng.integers(len(truth.subgroups)))))
    assert np.mean(true_u) > 0.6 and np.mean(random_u) < 0.1
    user = truth.users[0]
    q = truth.next_subgroup_distribution(user, len(truth.sequence(user)))  # the unobserved next item
    assert q.sum() == pytest.approx(1.0) and truth.utility(user, 3, q) <= 1.0
    one_hot = np.eye(len(truth.subgroups))[int(np.argmax(truth.next_subgroup_distribution(user, 3)))]
    assert truth.utility(user, 3, one_hot) == pytest.approx(1.0)
    with pytest.raises(IndexError):
        truth.utility(user, len(truth.sequence(user)) + 1, 0)


def test_the_judge_file_holds_the_simulators_utilities_over_recbole_ids(emoji_seq_small):
    config = config_for(emoji_seq_small)
    dataset = create_dataset(config)
    truth = EmojiSeqTruth.load(emoji_seq_small / "emoji-seq")
    judge = load_judge(config, dataset)
    users = torch.arange(1, 6)
    tokens = dataset.id2token(dataset.uid_field, users.numpy())
    positions = torch.tensor([len(truth.sequence(u)) - 1 for u in tokens])
    items = torch.randint(1, dataset.item_num, (5, 4))
    items[:, 0] = 0
    utility = judge.utility(users, items, positions)
    assert utility.shape == (5, 4) and torch.isnan(utility[:, 0]).all()
    expected = [[truth.utility(u, int(p), truth.item_subgroup(dataset.id2token(dataset.iid_field, int(i))))
                 for i in row[1:]] for u, p, row in zip(tokens, positions, items)]
    assert torch.allclose(utility[:, 1:], torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    # an item the user already took is worth the judge's repeat utility: 0 (no simulated user takes one twice)
    consumed = torch.zeros(5, 2, dtype=torch.long)
    consumed[:, 0] = items[:, 1]
    assert (judge.utility(users, items, positions, consumed)[:, 1] == 0).all()


def test_missing_font_or_emoji_list_says_what_to_install(tmp_path):
    with pytest.raises(EmojiResourceError, match="apt-get install fonts-noto-color-emoji unicode-data"):
        parse_emoji_test(tmp_path / "emoji-test.txt")
    with pytest.raises(EmojiResourceError, match="apt-get install fonts-noto-color-emoji unicode-data"):
        build_dataset("emoji-seq", tmp_path / "x" / "emoji-seq", config_for(tmp_path / "x", emoji_font_file=str(tmp_path / "no.ttf")))
    assert not (tmp_path / "x" / "emoji-seq").exists()  # nothing half-built left behind
    rc = run_recbole_main(["--model=SASRec", "--dataset=emoji-seq", f"--data_path={tmp_path / 'y'}",
                           f"--emoji_font_file={tmp_path / 'no.ttf'}"])
    assert rc == 2


def test_existing_folder_built_with_other_options_is_used_with_a_warning(emoji_seq_small, caplog):
    from recbole_gen.data import ensure_dataset_files

    config = config_for(emoji_seq_small, emoji_seq_users=USERS + 1)
    with caplog.at_level("WARNING"):
        assert ensure_dataset_files(config) == emoji_seq_small / "emoji-seq"
    assert f"'emoji_seq_users': {USERS}" in caplog.text and "--force" in caplog.text

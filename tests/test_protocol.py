"""The evaluation protocol (docs/evaluation.md): what a user already took is never ranked under ``repeatable: False``
(for sequential models too, as RecBole does it for general ones), a judge file's utilities and its repeat utility,
drawn twins, and the category baseline."""
import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.trainer import Trainer

from recbole_gen.config import Config, ConfigError
from recbole_gen.data import CONSUMED, create_dataset, data_preparation
from recbole_gen.data.dataloader import training_counts
from recbole_gen.data.judge import JudgeFile, JudgeFileError
from recbole_gen.evaluator.image_evaluation import with_image_evaluation
from recbole_gen.model import vq as vqlib
from recbole_gen.model.category_pop import CategoryPop
from recbole_gen.model.category_taste import CategoryTaste
from recbole_gen.quick_start import run_recbole
from test_evaluator_recbole import OracleRanker, write_image_dataset
from test_genlmm_support import emoji64, gtiny, make_model, recbole_config  # noqa: F401
from tiny_data import write_tiny_dataset

SPLIT = {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"}


class HistoryLover(OracleRanker):
    """Scores the user's own (possibly truncated) history highest: what masking must keep out of the ranking."""

    def full_sort_predict(self, interaction):
        scores = torch.rand(len(interaction), self.n_items) * 0.5
        return scores.scatter(1, interaction[self.ITEM_SEQ], 1.0)


def config_for(tmp_path, model, dataset="noreps", **extra):  # a dataset of users who never take an item twice
    return Config(model=model, dataset=dataset, config_dict={
        "data_path": str(tmp_path), "eval_args": SPLIT, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 3, "image_size": 16, "eval_batch_size": 7, "metrics": ["Hit", "NDCG"], "topk": [5],
        "valid_metric": "Hit@5", "train_neg_sample_args": None, "device": "cpu", "show_progress": False, **extra})


def consumed_by_user(loader, general):
    """{user: consumed items} from a test loader: RecBole's history_index for a general model, our field otherwise."""
    out = {}
    for interaction, history, _, _ in loader:
        users = interaction[loader.config["USER_ID_FIELD"]].tolist()
        if general:
            for row, item in zip(*(t.tolist() for t in history)):
                out.setdefault(users[row], set()).add(item)
        else:
            for row, items in enumerate(interaction[CONSUMED].tolist()):
                out[users[row]] = {i for i in items if i}
    return out


def test_a_sequential_rows_consumed_items_are_what_recbole_masks_for_a_general_model(tmp_path):
    write_image_dataset(tmp_path, name="noreps", n_users=30, n_items=25, length=7)
    sequential = config_for(tmp_path, "SASRec", repeatable=False)
    general = config_for(tmp_path, "Pop", repeatable=False)
    assert sequential["repeatable"] is False  # RecBole 1.2.1's Config refuses it for a sequential model
    _, _, seq_test = data_preparation(sequential, create_dataset(sequential))
    _, _, gen_test = data_preparation(general, create_dataset(general))
    mine, recboles = consumed_by_user(seq_test, general=False), consumed_by_user(gen_test, general=True)
    assert len(mine) == 30 and mine == recboles  # the first 6 of each user's 7 items, longer than MAX_ITEM_LIST_LENGTH
    assert all(len(items) == 6 for items in mine.values())


@pytest.mark.parametrize("repeatable", [False, True])
def test_consumed_items_never_reach_a_ranking_unless_the_dataset_is_repeatable(tmp_path, repeatable):
    write_image_dataset(tmp_path, name="noreps", n_users=30, n_items=25, length=7)
    config = config_for(tmp_path, HistoryLover, repeatable=repeatable, MAX_ITEM_LIST_LENGTH=6)
    train, _, test = data_preparation(config, create_dataset(config, images=True))
    trainer = with_image_evaluation(Trainer)(config, HistoryLover(config, train._dataset))
    trainer.tot_item_num = test._dataset.item_num  # as RecBole's evaluate sets it
    shown = 0
    for batch in test:
        interaction, scores, _, _ = trainer._full_sort_batch_eval(batch)
        top = scores.topk(5, dim=1).indices
        consumed = interaction[CONSUMED]
        shown += int((top.unsqueeze(2) == consumed.unsqueeze(1)).any(2).sum())
    assert (shown == 0) if not repeatable else (shown > 100)  # the model ranks the history first when allowed


def test_a_dataset_that_repeats_keeps_recboles_repeatable_evaluation(tmp_path):
    """On a walk through the catalogue users come back to items; RecBole's sequential default (repeatable) masks
    nothing, and the loader still knows each row's consumed items (for the judge)."""
    write_tiny_dataset(tmp_path)
    config = config_for(tmp_path, "SASRec", dataset="tiny", MAX_ITEM_LIST_LENGTH=20)
    assert config["repeatable"] is True
    _, _, test = data_preparation(config, create_dataset(config))
    interaction, history, _, positive_i = next(iter(test))
    assert history is None
    repeats = (interaction[CONSUMED] == positive_i.unsqueeze(1)).any(1)
    assert repeats.any()  # some test targets were consumed before: masking them would make them unreachable


def test_a_copy_of_the_last_item_earns_the_judges_repeat_utility(emoji_seq_small):
    result = run_recbole("LastItem", "emoji-seq", config_dict={
        "data_path": str(emoji_seq_small), "emoji_seq_users": 300, "metrics": ["Hit", "OracleUtility", "RepeatRate"],
        "topk": [10], "valid_metric": "Hit@10", "eval_args": SPLIT, "show_progress": False, "num_samples": 1}, saved=False)
    assert result["test_result"]["oracleutility"] == 0  # emoji-seq's judge: a repeat is worth 0
    assert result["test_result"]["repeatrate"] == 1
    assert result["test_result"]["hit@10"] > 0  # its image still ranks the catalogue, its own item left out


def test_a_judge_file_round_trips_and_a_bad_one_is_named(tmp_path):
    judge = JudgeFile(field="category", values=np.array(["a", "b"]), users=np.array(["u1", "u2"]),
                      offsets=np.array([0, 2, 3]), utility=np.array([[1, 0], [0.5, 1], [0, 1]], dtype=np.float32),
                      repeat_utility=0.25)
    judge.save(tmp_path / "x.judge.npz")
    again = JudgeFile.load(tmp_path / "x.judge.npz")
    assert again.field == "category" and again.repeat_utility == 0.25 and again.values.tolist() == ["a", "b"]
    assert np.array_equal(again.offsets, judge.offsets) and np.array_equal(again.utility, judge.utility)
    JudgeFile(**{**judge.__dict__, "utility": judge.utility * 2}).save(tmp_path / "bad.judge.npz")
    with pytest.raises(JudgeFileError, match=r"bad\.judge\.npz: utilities must lie in \[0, 1\]"):
        JudgeFile.load(tmp_path / "bad.judge.npz")
    (tmp_path / "junk.judge.npz").write_bytes(b"not a zip")
    with pytest.raises(JudgeFileError, match="junk.judge.npz: not a readable judge file"):
        JudgeFile.load(tmp_path / "junk.judge.npz")


def test_a_drawn_twin_shows_the_tokenizers_redraws_of_its_rankers_top_items(gtiny, tmp_path):
    data_path, cache = gtiny
    ranker = run_recbole("SASRec", "gtiny", config_dict=recbole_config(
        data_path, cache_dir=str(cache), hidden_size=16, inner_size=32, n_layers=1, n_heads=1, epochs=1,
        checkpoint_dir=str(tmp_path)))
    twin = make_model(gtiny, "TokenizerReconstruction", reconstruct="ranker", reconstruct_from=ranker["model_file"])
    seq = twin._dataset.inter_feat[twin.ITEM_SEQ][:6]
    batch = Interaction({twin.ITEM_SEQ: seq, twin.ITEM_SEQ_LEN: twin._dataset.inter_feat[twin.ITEM_SEQ_LEN][:6]})
    exclude = seq[:, :2]
    drawn = twin.generate_images(batch, num_samples=2, exclude=exclude)
    scores = twin.ranker.model.full_sort_predict(batch).detach()
    scores[:, 0] = -torch.inf
    scores.scatter_(1, exclude, -torch.inf)
    top = scores.topk(2, dim=1).indices
    assert torch.equal(drawn.plans, top)  # the ranker's own top 2, consumed items left out
    expected = vqlib.decode(twin.vq, twin.item_tokens.of(top.flatten(), twin.vq.device)).view(6, 2, 3, 16, 16)
    assert torch.equal(drawn.pixels, expected)  # bit-equal to the tokenizer's redraws


def test_category_taste_weighs_the_historys_categories_against_each_items_share_of_its_category(gtiny):
    """By hand: score = log(smoothing + recency-weighted count of the item's category in the history, the last item
    weighing ``continuity`` more) + log((item's training interactions + 1) / its category's), up to a row's constant."""
    data_path, cache = gtiny
    settings = dict(taste_continuity=0.5, taste_smoothing=0.1, taste_decay=0.5, MAX_ITEM_LIST_LENGTH=4)
    config = Config(model="CategoryTaste", dataset="gtiny", config_dict=recbole_config(
        data_path, cache_dir=str(cache), category_field="group", **settings,
        load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "group"]}))
    train, _, _ = data_preparation(config, create_dataset(config))
    model = CategoryTaste(config, train._dataset)
    category, counts = model.taste.values, training_counts(train._dataset)
    a, b = 1, int(torch.nonzero((category != category[1]) & (category > 0))[0])
    histories = [[a, b], [a, a, b, b]]
    seq = torch.tensor([[a, b, 0, 0], [a, a, b, b]])
    scores = model.full_sort_predict(Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: torch.tensor([2, 4])}))
    values = int(category.max())
    weights = 0.5 ** torch.arange(4.0)
    weights[0] += 0.5 / 0.5 * (weights.sum() + 0.1 * values)
    share = torch.zeros(values + 1).index_add_(0, category[1:], counts[1:] + 1)
    for row, items in enumerate(histories):
        taste = torch.full((values + 1,), 0.1)
        for back, item in enumerate(reversed(items)):
            taste[category[item]] += weights[back]
        expected = (taste[category] * (counts + 1) / share[category]).log()[1:]
        assert torch.allclose(scores[row, 1:] - scores[row, 1], expected - expected[0], atol=1e-4)
    assert scores[0, b] > scores[0, a] and scores[1, b] > scores[1, a] + 1  # the last item's category, more so twice


def test_category_pop_ranks_the_recent_categories_then_popularity(gtiny):
    data_path, cache = gtiny
    config = Config(model="CategoryPop", dataset="gtiny", config_dict=recbole_config(
        data_path, cache_dir=str(cache), category_field="group", category_decay=0.5,
        load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "group"]}))
    train, _, _ = data_preparation(config, create_dataset(config))
    model = CategoryPop(config, train._dataset)
    category = model.item_category
    a, b = 1, int(torch.nonzero((category != category[1]) & (category > 0))[0])
    batch = Interaction({model.ITEM_SEQ: torch.tensor([[a, b, a], [a, b, b]]), model.ITEM_SEQ_LEN: torch.tensor([2, 3])})
    scores = model.full_sort_predict(batch)  # row 0: history [a, b]; row 1: [a, b, b]
    order = scores.argsort(dim=1, descending=True)
    last, first = int((category == category[b]).sum()), int((category == category[a]).sum())
    assert (category[order[0, :last]] == category[b]).all()  # the last item's category first (0.5 ** 0 > 0.5 ** 1)
    assert (category[order[0, last:last + first]] == category[a]).all()
    counts = model.item_count[order[0, :last]]
    assert (counts[:-1] >= counts[1:]).all() and counts[0] > counts[-1]  # within it, by training popularity
    # equal counts follow the seeded tie order, not RecBole's ids (numbered by first appearance, held-out rows included)
    place = torch.argsort(model.tie_order)[order[0, :last]]
    tied = counts[:-1] == counts[1:]
    assert tied.any() and (place[:-1][tied] < place[1:][tied]).all()
    assert torch.equal(CategoryPop(config, train._dataset).tie_order, model.tie_order)
    assert not torch.equal(model.tie_order, torch.arange(len(model.tie_order)))
    assert torch.equal(order[1, :last], order[0, :last])  # [a, b, b]: b's category weighs 1.5 against a's 0.25
    with pytest.raises(ConfigError, match="category_field 'nosuch' is not a loaded item field"):
        CategoryPop(Config(model="CategoryPop", dataset="gtiny", config_dict=recbole_config(
            data_path, category_field="nosuch")), train._dataset)

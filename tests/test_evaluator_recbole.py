"""The whole path through RecBole's evaluator: dataset with item images -> catalogue -> model scores
-> collector -> registered image metrics next to Hit/NDCG in one result dict."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from recbole.data import data_preparation
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.trainer import Trainer
from recbole.utils import InputType

from recbole_gen.config import Config
from recbole_gen.data import create_dataset
from recbole_gen.evaluator.image_evaluation import with_image_evaluation
from recbole_gen.evaluator.metrics import ImageMetricMissingError
from recbole_gen.model.generative import Generation, GenerativeRecommender
from recbole_gen.retrieval.catalogue import clear_catalogue_cache

IMAGE_METRICS = ["TargetSim", "TargetSimBest", "HistorySim", "FutureSim", "Diversity", "ImageCoverage",
                 "Novelty", "FD", "OracleUtility"]
IMAGE_KEYS = {m.lower() for m in IMAGE_METRICS}


def write_image_dataset(parent, name="imgseq", n_users=24, n_items=20, length=8, size=16, seed=0):
    """Atomic .inter file + images/<item token>.png, every item a distinct random 4x4 colour pattern."""
    rng = np.random.default_rng(seed)
    folder = parent / name
    (folder / "images").mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, n_users + 1):
        for step, item in enumerate(rng.permutation(n_items)[:length] + 1):
            lines.append(f"u{user}\ti{item}\t{user * 100 + step}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    for item in range(1, n_items + 1):
        pattern = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        Image.fromarray(pattern).resize((size, size), Image.NEAREST).save(folder / "images" / f"i{item}.png")
    return parent


class OracleGenerator(GenerativeRecommender):
    """'Generates' exactly the true next item's image (reads the target: a test-only cheat)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def generate_images(self, interaction, num_samples=None, seed=None, **generation):
        target = interaction[self.ITEM_ID].cpu()
        return Generation(pixels=self.store.pixels(target).unsqueeze(1), plans=torch.full((len(target), 1), -1),
                          histories=[[] for _ in target])


class OracleRanker(SequentialRecommender):
    """Ranks the true next item first (a ranker: no generated images)."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def full_sort_predict(self, interaction):
        scores = torch.rand(len(interaction), self.n_items) * 0.5
        scores[torch.arange(len(interaction)), interaction[self.ITEM_ID]] = 1.0
        return scores


@pytest.fixture()
def setup(tmp_path):
    clear_catalogue_cache()
    write_image_dataset(tmp_path)

    def build(model, metrics=("Hit", "NDCG", *IMAGE_METRICS), **extra):
        config = Config(model=model, dataset="imgseq", config_dict={
            "data_path": str(tmp_path), "metrics": list(metrics), "topk": [1, 5], "valid_metric": "Hit@1",
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
            "loss_type": "CE", "train_neg_sample_args": None, "image_size": 16, "eval_encoder": "pixel",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "MAX_ITEM_LIST_LENGTH": 10, "eval_batch_size": 8, "device": "cpu", "use_gpu": False,
            "show_progress": False, "checkpoint_dir": str(tmp_path / "saved"), "eval_image_samples": 3, **extra,
        })
        dataset = create_dataset(config, images=True)
        train, valid, test = data_preparation(config, dataset)
        return config, dataset, train, valid, test

    return build


def expected_future_sim(config, valid, test, catalogue):
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    later = dict(zip(test._dataset.inter_feat[uid].tolist(), test._dataset.inter_feat[iid].tolist()))
    users, targets = valid._dataset.inter_feat[uid].tolist(), valid._dataset.inter_feat[iid].tolist()
    emb = catalogue.embeddings
    return float(np.mean([float(emb[t] @ emb[later[u]]) for u, t in zip(users, targets)]))


def test_generator_of_the_true_image_scores_hit1_and_targetsim_1(setup):
    config, dataset, train, valid, test = setup(OracleGenerator)
    model = OracleGenerator(config, train._dataset)
    trainer = with_image_evaluation(Trainer)(config, model)
    trainer.set_future_data(test)
    valid_result = trainer.evaluate(valid, load_best_model=False)
    test_result = trainer.evaluate(test, load_best_model=False)
    for result in (valid_result, test_result):
        assert {"hit@1", "hit@5", "ndcg@1", "ndcg@5"} | IMAGE_KEYS == set(result)
        assert result["hit@1"] == 1.0 and result["ndcg@5"] == 1.0
        assert result["targetsim"] == pytest.approx(1.0, abs=1e-4)
        assert result["targetsimbest"] == pytest.approx(1.0, abs=1e-4)
        assert result["novelty"] == 0.0
        assert result["fd"] == pytest.approx(0.0, abs=1e-3)
        assert math.isnan(result["diversity"])  # one sample per user
        assert math.isnan(result["oracleutility"])  # no judge file for this dataset
        assert 0 < result["imagecoverage"] <= 1
        assert -1 < result["historysim"] < 1
    assert valid_result["futuresim"] == pytest.approx(expected_future_sim(config, valid, test, trainer.catalogue), abs=1e-4)
    assert math.isnan(test_result["futuresim"])  # nothing after the test item
    assert trainer.image_metric_info["encoder"] == "pixel"


def test_ranker_gets_the_same_columns_from_its_top_items(setup):
    config, dataset, train, valid, test = setup(OracleRanker)
    trainer = with_image_evaluation(Trainer)(config, OracleRanker(config, train._dataset))
    trainer.set_future_data(test)
    result = trainer.evaluate(valid, load_best_model=False)
    assert {"hit@1", "hit@5", "ndcg@1", "ndcg@5"} | IMAGE_KEYS == set(result)
    assert result["hit@1"] == 1.0
    assert result["targetsimbest"] == pytest.approx(1.0, abs=1e-4)  # top-1 is the target
    assert result["targetsim"] < 0.9  # the mean over its top-3 is not
    assert result["novelty"] == 0.0  # a ranker only shows catalogue items
    assert result["diversity"] > 0  # 3 distinct items per user
    assert not math.isnan(result["futuresim"])


def test_an_evaluation_leaves_the_training_random_streams_as_it_found_them(setup):
    """The ranker draws torch.rand while it is evaluated: the next epoch must see the same random numbers (dropout,
    BERT4Rec's masks) whichever metrics validate it."""
    import random

    config, dataset, train, valid, test = setup(OracleRanker)
    trainer = with_image_evaluation(Trainer)(config, OracleRanker(config, train._dataset))
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = torch.rand(4), np.random.rand(4), random.random()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    trainer.evaluate(valid, load_best_model=False)
    after = torch.rand(4), np.random.rand(4), random.random()
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]


def test_sasrec_and_generator_share_columns(setup):
    from recbole.model.sequential_recommender import SASRec

    config, dataset, train, valid, test = setup(SASRec, n_layers=1, n_heads=1, hidden_size=8, inner_size=8)
    trainer = with_image_evaluation(Trainer)(config, SASRec(config, train._dataset))
    result = trainer.evaluate(test, load_best_model=False)
    assert {"hit@1", "hit@5", "ndcg@1", "ndcg@5"} | IMAGE_KEYS == set(result)
    assert result["novelty"] == 0.0 and 0 <= result["hit@5"] <= 1


def test_image_metrics_without_the_evaluation_trainer_fail_clearly(setup):
    config, dataset, train, valid, test = setup(OracleRanker, metrics=("Hit", "TargetSim"))
    trainer = Trainer(config, OracleRanker(config, train._dataset))
    with pytest.raises(ImageMetricMissingError, match="build_trainer"):
        trainer.evaluate(valid, load_best_model=False)


def test_ranking_only_config_is_untouched(setup):
    config, dataset, train, valid, test = setup(OracleRanker, metrics=("Hit", "MRR"))
    trainer = with_image_evaluation(Trainer)(config, OracleRanker(config, train._dataset))
    result = trainer.evaluate(valid, load_best_model=False)
    assert set(result) == {"hit@1", "hit@5", "mrr@1", "mrr@5"} and trainer.catalogue is None


def test_per_user_values_average_to_recboles_result_and_refit_the_set_metrics(setup):
    from recbole.model.sequential_recommender import SASRec

    from recbole_gen.evaluator.intervals import resampled, user_values

    config, dataset, train, valid, test = setup(SASRec, n_layers=1, n_heads=1, hidden_size=8, inner_size=8,
                                                eval_fd_per_user=True)
    trainer = with_image_evaluation(Trainer)(config, SASRec(config, train._dataset))
    result = trainer.evaluate(test, load_best_model=False)
    values = user_values(trainer.eval_collector.last_struct, config)
    assert len(values["user"]) == len(test._dataset.inter_feat) and (np.diff(values["user"]) > 0).all()
    everyone = resampled(values, np.arange(len(values["user"]))[None])
    assert set(everyone) == set(result)
    for metric, value in result.items():
        assert everyone[metric][0] == pytest.approx(value, abs=1e-4, nan_ok=True), metric


class NoisyGenerator(OracleGenerator):
    """Two noisy copies of the true next item's image per user: hits and misses, and no ties."""

    def generate_images(self, interaction, num_samples=None, seed=None, **generation):
        target = interaction[self.ITEM_ID].cpu()
        pixels = self.store.pixels(target).unsqueeze(1).repeat(1, 2, 1, 1, 1)
        noise = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(int(target.sum())))
        return Generation(pixels=(pixels + 3.0 * noise).clamp(0, 1), plans=torch.full((len(target), 2), -1),
                          histories=[[] for _ in target])


def test_topk_from_the_index_search_gives_the_dense_scores_metrics(setup):
    metrics = ("Hit", "NDCG", "MRR", "Precision", "Recall", "TargetSim", "ImageCoverage", "FD")
    results = {}
    for source in ("scores", "index"):
        config, dataset, train, valid, test = setup(NoisyGenerator, metrics=metrics, gen_rank_from=source)
        trainer = with_image_evaluation(Trainer)(config, NoisyGenerator(config, train._dataset))
        results[source] = trainer.evaluate(test, load_best_model=False)
        assert trainer.catalogue.index.exact  # auto: 20 items get the flat index
    assert results["index"] == results["scores"]
    assert 0 < results["scores"]["hit@1"] < results["scores"]["hit@5"] < 1
    config, dataset, train, valid, test = setup(NoisyGenerator, metrics=("Hit", "GAUC"), gen_rank_from="index")
    trainer = with_image_evaluation(Trainer)(config, NoisyGenerator(config, train._dataset))
    with pytest.raises(ValueError, match="gen_rank_from: index .* only top-k metrics"):
        trainer.evaluate(test, load_best_model=False)


def test_the_fd_axes_are_computed_once_per_catalogue_and_a_damaged_file_is_rebuilt(setup, monkeypatch):
    """Every benchmark row and rank builds the same catalogue: its SVD is saved beside the embeddings and read back."""
    from recbole_gen.retrieval.catalogue import ImageCatalogue

    config, dataset, *_ = setup(OracleRanker)
    calls = []
    svd = ImageCatalogue._principal_axes
    monkeypatch.setattr(ImageCatalogue, "_principal_axes", lambda self, d: calls.append(d) or svd(self, d))

    def build():
        clear_catalogue_cache()
        return ImageCatalogue.from_config(config, dataset.image_store).fd_projection

    first = build()
    assert first is not None and calls == [config["eval_fd_dim"]]
    assert torch.equal(build(), first) and len(calls) == 1  # read back, not recomputed
    (saved,) = (dataset.image_store.cache.root / "fd-axes").glob("*.pt")
    saved.write_bytes(b"not an array")
    assert torch.equal(build(), first) and len(calls) == 2


class ScoreRanker(SequentialRecommender):
    """Every user gets the same scores: all equal (``tied``), or falling with the item id."""

    input_type = InputType.POINTWISE
    tied = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def full_sort_predict(self, interaction):
        scores = torch.zeros(self.n_items) if self.tied else -torch.arange(self.n_items, dtype=torch.float)
        return scores.expand(len(interaction), -1).clone()


@pytest.mark.parametrize("tied", [True, False])
def test_equal_scores_are_ranked_in_the_seeded_tie_order_not_by_item_id(setup, monkeypatch, tied):
    """RecBole numbers items by first appearance in the .inter file (held-out rows included): its top-k would rank
    equal scores by that number. Tied items come in an order set by the seed; distinct scores keep their order."""
    monkeypatch.setattr(ScoreRanker, "tied", tied)
    ranked = []
    for seed in (1, 2):
        config, dataset, train, valid, test = setup(ScoreRanker, metrics=("Hit", "ShannonEntropy"), seed=seed)
        trainer = with_image_evaluation(Trainer)(config, ScoreRanker(config, train._dataset))
        trainer.set_future_data(test)
        result = trainer.evaluate(valid, load_best_model=False)
        struct = trainer.eval_collector.last_struct
        items, hits = struct.get("rec.items"), struct.get("rec.topk")[:, :-1]
        targets = valid._dataset.inter_feat[config["ITEM_ID_FIELD"]]
        assert torch.equal(hits.bool(), items == targets.view(-1, 1))  # hits and items agree, item ids restored
        assert result["hit@5"] == pytest.approx(float(hits[:, :5].any(1).float().mean()), abs=1e-4)  # 4 decimals
        ranked.append(items)
    lowest_ids = all(sorted(row.tolist()) == row.tolist() for row in ranked[0])
    assert torch.equal(ranked[0], ranked[1]) != tied and lowest_ids != tied

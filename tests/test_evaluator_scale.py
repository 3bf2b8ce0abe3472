"""Catalogue scale: the index kind ``auto`` picks by size, approximate kinds keep the exact ranking metrics within
their recall, and RecBole's top-k entries made from the index search equal those from dense scores."""
import numpy as np
import pytest
import torch
from recbole.evaluator.collector import Collector

from recbole_gen.config import Config, ConfigError
from recbole_gen.evaluator.collector import ImageCollector
from recbole_gen.evaluator.scoring import TopKScores, catalogue_scores, catalogue_topk
from recbole_gen.retrieval.index import CatalogueIndex, IndexSettings, auto_kind, factory_string

# recall@10 against the flat index that each kind keeps at its defaults on this test's catalogue (measured: 0.989 for
# each, and the same Hit@10 as flat, 0.55); docs/scale.md documents the 1M-item numbers of benchmarks/scale
RECALL_FLOOR = {"ivf": 0.97, "ivf_hnsw": 0.97, "ivf_pq": 0.95}


def index_settings(**keys):
    """properties/overall.yaml's index defaults, then ``keys``."""
    return IndexSettings.from_config(Config(model="Pop", dataset="none", config_dict=keys))


def clustered(items=10_000, dim=32, clusters=64, users=200, samples=2, noise=2.0, seed=0):
    """A catalogue (row 0 padding) of noisy cluster members, and per user a target item and ``samples`` noisy
    copies of it (a generator's images), all L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    emb = centres[rng.integers(0, clusters, items + 1)] + 0.7 * rng.normal(size=(items + 1, dim))
    emb[0] = 0
    targets = rng.integers(1, items + 1, users)
    sample = emb[targets][:, None, :] + noise * rng.normal(size=(users, samples, dim))
    normalise = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    return (torch.tensor(normalise(emb), dtype=torch.float32), torch.tensor(normalise(sample), dtype=torch.float32),
            torch.tensor(targets))


def test_auto_picks_the_kind_by_catalogue_size():
    settings = index_settings()
    assert settings.eval_index == "auto"  # the default
    limits = settings.eval_index_auto_limits
    assert [auto_kind(n, limits) for n in (3_655, 99_999, 100_000, 999_999, 1_000_000, 9_999_999, 10_000_000, 10 ** 8)] \
        == ["flat", "flat", "ivf", "ivf", "ivf_hnsw", "ivf_hnsw", "ivf_pq", "ivf_pq"]
    emoji = CatalogueIndex(torch.nn.functional.normalize(torch.randn(3_656, 8), dim=1), settings=settings)
    assert emoji.kind == "flat" and emoji.exact  # the emoji catalogue keeps its exact index (committed results)


def test_factory_strings_follow_the_keys():
    s = index_settings()
    assert factory_string("flat", 64, 10 ** 6, s) == ("Flat", "")
    assert factory_string("hnsw", 64, 10 ** 6, s)[0] == f"HNSW{s.eval_index_hnsw_m},Flat"
    nlist = round(s.eval_index_nlist_factor * 1000)
    assert factory_string("ivf", 64, 10 ** 6, s) == (f"IVF{nlist},Flat", f"nprobe={s.eval_index_nprobe}")
    assert factory_string("ivf_hnsw", 64, 10 ** 6, s)[0] == f"IVF{nlist}_HNSW{s.eval_index_hnsw_m},Flat"
    assert factory_string("ivf_pq", 64, 10 ** 6, s)[0] == \
        f"IVF{nlist}_HNSW{s.eval_index_hnsw_m},PQ{64 // s.eval_index_pq_dims}x{s.eval_index_pq_bits}np"
    assert factory_string("ivf", 64, 3_900, s)[0] == "IVF100,Flat"  # at most 39 training points per cell
    with pytest.raises(ConfigError, match="eval_index_pq_dims must divide the embedding dimension 63"):
        factory_string("ivf_pq", 63, 10 ** 6, s)
    with pytest.raises(ConfigError, match="eval_index must be one of flat, hnsw, ivf, ivf_hnsw, ivf_pq or auto"):
        index_settings(eval_index="lsh")


@pytest.mark.parametrize("kind", ["ivf", "ivf_hnsw", "ivf_pq"])
def test_approximate_kinds_keep_the_flat_metrics_within_their_recall(kind):
    emb, samples, targets = clustered()
    flat = CatalogueIndex(emb)
    approx = CatalogueIndex(emb, settings=index_settings(eval_index=kind))
    assert approx.kind == kind and not approx.exact
    assert approx.recall_vs_exact(samples.flatten(0, 1), k=10) >= RECALL_FLOOR[kind]
    hits = {}
    for name, index in (("flat", flat), (kind, approx)):
        scores, items = catalogue_topk(samples, index, 10, reduce="max")
        found = items == targets.unsqueeze(1)
        hits[name] = found.any(1).float().mean().item()
        exact = (samples @ emb[items.clamp(min=0)].transpose(1, 2)).max(1).values  # [users, 10]: best cosine
        torch.testing.assert_close(scores, exact)  # approximate kinds return exact scores of what they find
    assert 0.3 < hits["flat"] < 1.0  # the test means something: neither all nor no hits
    assert abs(hits["flat"] - hits[kind]) <= 1 - RECALL_FLOOR[kind]


def collector(config_dict, kind=ImageCollector):
    return kind(Config(model="Pop", dataset="none", config_dict={"topk": [1, 5], **config_dict}))


def test_topk_entries_from_the_index_equal_recboles_from_dense_scores():
    emb, samples, targets = clustered(items=500, users=40, samples=3)
    index = CatalogueIndex(emb)
    positive_u, positive_i = torch.arange(40), targets
    metrics = {"metrics": ["Hit", "NDCG", "MRR", "Precision", "ItemCoverage"]}
    dense, topk = collector(metrics, Collector), collector(metrics)
    scores = catalogue_scores(samples, index)
    top_scores, top_items = catalogue_topk(samples, index, 5)
    dense.eval_batch_collect(scores, None, positive_u, positive_i)
    topk._collect_topk(TopKScores(top_scores, top_items, len(emb)), positive_u, positive_i)
    for key in ("rec.topk", "rec.items"):
        assert torch.equal(dense.data_struct[key], topk.data_struct[key]), key
    assert dense.data_struct["rec.topk"][:, :5].sum() > 5  # some hits to compare
    gauc = collector({"metrics": ["GAUC"]})
    with pytest.raises(ValueError, match="need every item's score.*gen_rank_from: scores"):
        gauc._collect_topk(TopKScores(top_scores, top_items, len(emb)), positive_u, positive_i)

"""Image metric functions, scores and the FAISS index against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from recbole_gen.config import Config
from recbole_gen.retrieval.catalogue import ImageCatalogue
from recbole_gen.retrieval.encoders import EncoderWeightsError, build_image_encoder
from recbole_gen.evaluator.functional import FrechetStats, coverage, frechet_distance, gaussian_stats, image_metrics
from recbole_gen.retrieval.index import CatalogueIndex, EmptyCatalogueError, IndexSettings
from recbole_gen.evaluator.scoring import catalogue_scores, catalogue_topk


def index_settings(**keys):
    """The catalogue index's settings: properties/overall.yaml's defaults, then ``keys``."""
    return IndexSettings.from_config(Config(model="Pop", dataset="none", config_dict=keys))


def unit(*rows):
    x = torch.tensor(rows, dtype=torch.float32)
    return x / x.norm(dim=1, keepdim=True)


# catalogue: padding row 0 (zeros), items 1..4 along known directions
CAT = torch.cat([torch.zeros(1, 2), unit([1, 0], [0, 1], [1, 1], [-1, 0])])
S = math.sqrt(0.5)


def test_image_metrics_hand_computed():
    samples = unit([1, 0], [0, 1]).unsqueeze(0)  # one user, two samples: items 1 and 2 exactly
    out = image_metrics(samples, target_ids=torch.tensor([3]), history_ids=torch.tensor([[1, 4, 0]]),
                        future_ids=torch.tensor([[2, 0]]), catalogue_emb=CAT)
    assert out["target_sim"].item() == pytest.approx(S)  # both at 45 degrees to item 3
    assert out["target_sim_best"].item() == pytest.approx(S)
    # history {1, 4}: cos(s1,1)=1, cos(s1,4)=-1, cos(s2,1)=0, cos(s2,4)=0 -> mean 0; padding 0 ignored
    assert out["history_sim"].item() == pytest.approx(0.0)
    assert out["future_sim"].item() == pytest.approx(0.5)  # cos(s1,2)=0, cos(s2,2)=1
    assert out["diversity"].item() == pytest.approx(1.0)  # one pair, orthogonal
    assert out["novelty"].item() == 0.0  # both samples are catalogue items exactly
    assert out["nearest"].tolist() == [[1, 2]]
    assert math.isnan(out["oracle_utility"].item())


def test_novelty_of_new_image_and_nan_cases():
    samples = unit([1, 2]).unsqueeze(0)  # single sample, not in the catalogue
    out = image_metrics(samples, torch.tensor([0]), None, None, CAT)
    best = max(float(samples[0, 0] @ CAT[i]) for i in range(1, 5))
    assert out["novelty"].item() == pytest.approx(1 - best)
    assert out["novelty"].item() > 0.01
    for key in ("target_sim", "target_sim_best", "history_sim", "future_sim", "diversity"):
        assert math.isnan(out[key].item()), key  # no target, no history, one sample


def test_sample_mask_and_judge():
    samples = unit([1, 0], [0, 1], [1, 1]).unsqueeze(0)
    mask = torch.tensor([[True, False, True]])
    judge = lambda users, emb, nearest, positions, consumed: (nearest == 1).float()  # noqa: E731  likes item 1 only
    out = image_metrics(samples, torch.tensor([1]), None, None, CAT, sample_mask=mask,
                        user_ids=torch.tensor([7]), judge=judge, consumed_ids=torch.tensor([[3, 0]]))
    assert out["target_sim"].item() == pytest.approx((1 + S) / 2)
    assert out["target_sim_best"].item() == pytest.approx(1.0)
    assert out["diversity"].item() == pytest.approx(1 - S)
    assert out["oracle_utility"].item() == pytest.approx(0.5)
    assert out["nearest"].tolist() == [[1, -1, 3]]
    assert out["repeat_rate"].item() == pytest.approx(0.5)  # the third image's nearest item (3) was consumed
    assert coverage(out["nearest"], 4) == pytest.approx(0.5)


def test_plan_fidelity_counts_images_whose_nearest_item_is_their_plan():
    samples = unit([1, 0], [0, 1], [1, 1.1], [1, 0.05]).unsqueeze(0)  # nearest items 1, 2, 3, 1
    plans = torch.tensor([[1, 3, 3, -1]])  # the last image had no plan: not counted
    out = image_metrics(samples, torch.tensor([1]), None, None, CAT, plan_ids=plans)
    assert out["plan_fidelity"].item() == pytest.approx(2 / 3)
    twin = torch.cat([CAT, CAT[1:2]])  # item 5: the very image of item 1 (the emoji font has such duplicates)
    out = image_metrics(samples[:, :1], torch.tensor([1]), None, None, twin, plan_ids=torch.tensor([[5]]))
    assert out["plan_fidelity"].item() == 1.0
    assert torch.isnan(image_metrics(samples, torch.tensor([1]), None, None, CAT)["plan_fidelity"]).all()


def test_frechet_distance_known_gaussians():
    # equal covariances: FD = |mu1 - mu2|^2
    assert frechet_distance([0, 0], np.eye(2), [3, 4], np.eye(2)) == pytest.approx(25.0)
    # diagonal covariances: FD = sum (sqrt(a) - sqrt(b))^2
    assert frechet_distance([0, 0], np.diag([4.0, 9.0]), [0, 0], np.diag([1.0, 1.0])) == pytest.approx(1 + 4)
    assert frechet_distance([1], [[2.0]], [1], [[2.0]]) == pytest.approx(0.0, abs=1e-9)


def test_frechet_stats_rows_match_direct_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 3)), rng.normal(loc=1.0, size=(40, 3))
    rows = torch.cat([FrechetStats.row(torch.tensor(a[:20]), torch.tensor(b[:10])),
                      FrechetStats.row(torch.tensor(a[20:]), torch.tensor(b[10:]))])
    direct = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert FrechetStats.distance(rows) == pytest.approx(direct, rel=1e-6)


def test_flat_index_equals_numpy_brute_force():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(301, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[0] = 0
    valid = np.ones(301, dtype=bool)
    valid[[0, 5, 17]] = False  # padding and two items without images
    index = CatalogueIndex(emb, valid=valid)
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    brute = queries @ emb.T
    brute[:, ~valid] = -np.inf
    scores, ids = index.search(queries, 10)
    np.testing.assert_array_equal(ids.numpy(), np.argsort(-brute, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(brute, ids.numpy(), 1), rtol=1e-5, atol=1e-6)
    full = index.full_scores(torch.from_numpy(queries)).numpy()
    np.testing.assert_allclose(full, brute, rtol=1e-5, atol=1e-6)
    assert np.isneginf(full[:, [0, 5, 17]]).all()
    assert not np.isin(ids.numpy(), [0, 5, 17]).any()


def test_search_pads_when_catalogue_is_smaller_than_k():
    index = CatalogueIndex(CAT)
    scores, ids = index.search(unit([1, 0]), 6)
    assert ids[0, :4].tolist() == [1, 3, 2, 4] and ids[0, 4:].tolist() == [-1, -1]
    assert torch.isneginf(scores[0, 4:]).all()


# Measured on this seeded set: HNSW(M=16, efSearch=32) 0.94, IVF(64 cells, nprobe=16) 0.79 (exact = 1).
# Random 32-d Gaussians are a hard case for approximate search; the floors guard against regressions.
@pytest.mark.parametrize("kind,floor", [("hnsw", 0.9), ("ivf", 0.7)])
def test_approximate_index_recall_floor(kind, floor):
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(4001, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = rng.normal(size=(200, 32)).astype(np.float32)
    options = {"hnsw": {"eval_index_hnsw_m": 16, "eval_index_ef_search": 32},
               "ivf": {"eval_index_nlist": 64, "eval_index_nprobe": 16}}[kind]
    index = CatalogueIndex(emb, settings=index_settings(eval_index=kind, **options))
    recall = index.recall_vs_exact(queries, k=10)
    assert floor <= recall < 1.0, recall


def test_catalogue_scores_max_mean_and_padding():
    index = CatalogueIndex(CAT)
    samples = unit([1, 0], [0, 1]).unsqueeze(0)
    best = catalogue_scores(samples, index, reduce="max")
    mean = catalogue_scores(samples, index, reduce="mean")
    assert torch.isneginf(best[0, 0]) and torch.isneginf(mean[0, 0])
    assert best[0, 1:].tolist() == pytest.approx([1, 1, S, 0])
    assert mean[0, 1:].tolist() == pytest.approx([0.5, 0.5, S, -0.5])
    masked = catalogue_scores(samples, index, reduce="mean", sample_mask=torch.tensor([[True, False]]))
    assert masked[0, 1:].tolist() == pytest.approx([1, 0, S, -1])
    top_scores, top_ids = catalogue_topk(samples, index, 3)
    assert set(top_ids[0, :2].tolist()) == {1, 2} and top_ids[0, 2].item() == 3
    assert top_scores[0].tolist() == pytest.approx([1, 1, S])


def test_interleave_shows_every_images_nearest_item_before_anyones_second_and_drops_excluded_items():
    # image A copies item 1, whose neighbour item 2 is closer to A (0.93) than image B's nearest item 4 is to B (0.74)
    catalogue = torch.cat([torch.zeros(1, 4), unit([1, 0, 0, 0], [1, 0.4, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1])])
    index = CatalogueIndex(catalogue)
    samples = unit([1, 0, 0, 0], [0, 0, 0.9, 1]).unsqueeze(0)
    order = lambda scores: torch.argsort(scores[0], descending=True)[:4].tolist()  # noqa: E731
    assert order(catalogue_scores(samples, index, reduce="max")) == [1, 2, 4, 3]
    assert order(catalogue_scores(samples, index, reduce="interleave")) == [1, 4, 2, 3]  # top 2: each image's nearest
    excluded = catalogue_scores(samples, index, exclude=torch.tensor([[1, 0]]))  # item 1 consumed: A shows item 2
    assert torch.isneginf(excluded[0, 1]) and order(excluded)[:3] == [2, 4, 3]
    for reduce in ("interleave", "max"):
        for exclude in (None, torch.tensor([[1, 0]]), torch.tensor([[4, 2]])):
            dense = catalogue_scores(samples, index, reduce=reduce, exclude=exclude)
            _, top = catalogue_topk(samples, index, 2, reduce=reduce, exclude=exclude)
            assert top[0].tolist() == torch.argsort(dense[0], descending=True)[:2].tolist(), (reduce, exclude)


def test_wrong_dimensions_and_empty_catalogue_errors():
    index = CatalogueIndex(CAT)
    with pytest.raises(ValueError, match="dimension 3.*index has 2"):
        catalogue_scores(torch.ones(1, 2, 3), index)
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones((1, 5), dtype=np.float32), 1)
    with pytest.raises(ValueError, match="dimension 3 but catalogue embeddings 2"):
        image_metrics(torch.ones(1, 1, 3), torch.tensor([1]), None, None, CAT)
    with pytest.raises(EmptyCatalogueError, match="no item"):
        CatalogueIndex(torch.zeros(3, 4))
    with pytest.raises(EmptyCatalogueError, match="no item image"):
        ImageCatalogue.from_pixels(torch.zeros(4, 3, 8, 8), build_image_encoder("random", size=8))


def test_encoders_shapes_norms_and_pixel_identity():
    torch.manual_seed(0)
    pixels = torch.rand(6, 3, 16, 16)
    pixel = build_image_encoder("pixel").fit(pixels)
    emb = pixel.encode(pixels)
    assert emb.shape == (6, 3 * 16 * 16) and torch.allclose(emb.norm(dim=1), torch.ones(6))
    rand = build_image_encoder("random", size=16, dim=8, batch_size=4)
    assert rand.encode(pixels).shape == (6, 8)
    assert torch.equal(rand.encode(pixels[:2]), build_image_encoder("random", size=16, dim=8).encode(pixels[:2]))
    catalogue = ImageCatalogue.from_pixels(torch.cat([torch.zeros(1, 3, 16, 16), pixels]), pixel)
    assert catalogue.index.search(pixel.encode(pixels), 1)[1].flatten().tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        pixel.encode(torch.rand(2, 16, 16))


def test_pixel_encoder_needs_fit():
    with pytest.raises(RuntimeError, match="fit"):
        build_image_encoder("pixel").encode(torch.rand(1, 3, 8, 8))


def test_efficientnet_lite0_loads_packaged_weights():
    encoder = build_image_encoder("efficientnet-lite0", size=32)
    emb = encoder.encode(torch.rand(2, 3, 32, 32))
    assert emb.shape == (2, 1280) and torch.allclose(emb.norm(dim=1), torch.ones(2))
    with pytest.raises(EncoderWeightsError, match="not found"):
        build_image_encoder("efficientnet-lite0", path="/nonexistent/lite0.pth")


def test_open_clip_missing_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(EncoderWeightsError, match="eval_encoder_path"):
        build_image_encoder("open_clip")
    with pytest.raises(EncoderWeightsError, match="not found.*never downloads"):
        build_image_encoder("open_clip", path=str(tmp_path / "clip.safetensors"))
    with pytest.raises(EncoderWeightsError, match="open_clip_config.json"):
        build_image_encoder("open_clip", path=f"local-dir:{tmp_path}")


def test_open_clip_local_dir_loads_bit_exactly(tmp_path):
    import json

    import open_clip
    from safetensors.torch import save_file

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    encoder = build_image_encoder("open_clip", path=f"local-dir:{tmp_path}")
    pixels = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.eval().encode_image((pixels - mean) / std), dim=-1)
    assert encoder.dim == 16 and encoder.size == 32
    torch.testing.assert_close(encoder.encode(pixels), expected)


def test_unknown_encoder():
    with pytest.raises(ValueError, match="Known: efficientnet-lite0, open_clip, pixel, random"):
        build_image_encoder("clip-magic")

"""The baselines that use only what a deployment has: ImageKNN (image similarity to the history) and LastItem (a
copy of the last history item), on a catalogue of random patterns with one near-duplicate."""
import numpy as np
import pytest
import torch
from PIL import Image
from recbole.data import data_preparation
from recbole.data.interaction import Interaction

from recbole_gen.config import Config, ConfigError
from recbole_gen.data import create_dataset
from recbole_gen.model.image_knn import ImageKNN
from recbole_gen.model.last_item import LastItem

ITEMS = 12
TWIN = ITEMS + 1  # a near-duplicate of item 3


def write_catalogue(parent, name="knn", users=20, length=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    folder = parent / name
    (folder / "images").mkdir(parents=True)
    patterns = {item: rng.integers(0, 256, size=(4, 4, 3)) for item in range(1, ITEMS + 1)}
    patterns[TWIN] = np.clip(patterns[3] + rng.integers(-6, 7, size=(4, 4, 3)), 0, 255)
    for item, pattern in patterns.items():
        Image.fromarray(pattern.astype(np.uint8)).resize((size, size), Image.NEAREST).save(folder / "images" / f"i{item}.png")
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, users + 1):
        for step, item in enumerate(rng.permutation(TWIN)[:length] + 1):
            lines.append(f"u{user}\ti{item}\t{user * 100 + step}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return parent


def build(tmp_path, model, **extra):
    write_catalogue(tmp_path)
    config = Config(model=model.__name__, dataset="knn", config_dict={
        "data_path": str(tmp_path), "image_size": 16, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "MAX_ITEM_LIST_LENGTH": 5, "device": "cpu", "use_gpu": False, "show_progress": False, **extra})
    train, _, _ = data_preparation(config, create_dataset(config, images=True))
    dataset = train._dataset
    return model(config, dataset), dataset


def histories(model, dataset, tokens):
    ids = [[int(dataset.token2id(dataset.iid_field, f"i{t}")) for t in row] for row in tokens]
    width = max(len(row) for row in ids)
    seq = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    return Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: torch.tensor([len(row) for row in ids])}), ids


def test_image_knn_ranks_the_last_items_near_duplicate_first_and_never_the_history(tmp_path):
    model, dataset = build(tmp_path, ImageKNN, knn_decay=0.5)
    interaction, ids = histories(model, dataset, [[7, 3], [3, 7, 9]])
    scores = model.full_sort_predict(interaction)
    twin = int(dataset.token2id(dataset.iid_field, f"i{TWIN}"))
    assert int(scores[0].argmax()) == twin
    assert all(torch.isneginf(scores[row, ids[row]]).all() for row in range(2))  # history items are left out
    assert torch.isneginf(scores[:, 0]).all()  # the padding item
    assert model.predict(Interaction({**interaction.interaction, model.ITEM_ID: torch.tensor([twin, twin])})).shape == (2,)


def test_image_knn_decay_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="knn_decay"):
        build(tmp_path, ImageKNN, knn_decay=1.5)


def test_last_item_draws_a_copy_of_the_last_history_image(tmp_path):
    model, dataset = build(tmp_path, LastItem, num_samples=2)
    interaction, ids = histories(model, dataset, [[7, 3], [5]])
    generation = model.generate_images(interaction)
    assert generation.pixels.shape[:2] == (2, 2)
    for row, history in enumerate(ids):
        assert torch.equal(generation.pixels[row, 0], model.store.pixels([history[-1]])[0])
        assert generation.plans[row].tolist() == [history[-1]] * 2 and generation.histories[row] == history

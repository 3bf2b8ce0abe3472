"""Item images: the dataset format, the store's pixels/texts/hashes, the disk cache, validation."""
import contextlib
import copy
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import recbole_gen.data.images as images_module
from recbole_gen.config import Config
from recbole_gen.data import ItemImageError, ItemImageStore, create_dataset
from recbole_gen.data.cache import ArtifactCache

N_ITEMS = 12


def colour(i):
    return ((37 * i) % 256, (91 * i) % 256, (151 * i) % 256)


def write_image_dataset(parent, name="pics", n_items=N_ITEMS, image_column=True, size=16):
    """``parent/name``: .inter (walks), .item (name with spaces, image path) and images/i<k>.png."""
    folder = Path(parent) / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, 21):
        for step in range(6):
            inter.append(f"u{u}\ti{(u + step) % n_items + 1}\t{u * 100 + step}")
    header = "item_id:token\tname:token_seq" + ("\timage:token" if image_column else "")
    item = [header]
    for i in range(1, n_items + 1):
        Image.new("RGB", (size, size), colour(i)).save(folder / "images" / f"i{i}.png")
        item.append(f"i{i}\titem number  {i}" + (f"\timages/i{i}.png" if image_column else ""))
    (folder / f"{name}.inter").write_text("\n".join(inter) + "\n")
    (folder / f"{name}.item").write_text("\n".join(item) + "\n")
    return folder


def make_config(parent, name="pics", **overrides):
    settings = {
        "data_path": str(parent),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "image_size": 8,
        "show_progress": False,
        **overrides,
    }
    return Config(model="SASRec", dataset=name, config_dict=settings)


def load_store(parent, name="pics", **overrides):
    config = make_config(parent, name, **overrides)
    dataset = create_dataset(config, images=True)
    return dataset.image_store, dataset, config


@pytest.fixture
def pics(tmp_path):
    return write_image_dataset(tmp_path / "data")


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    original = images_module.decode_image

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(images_module, "decode_image", counting)
    return calls


def test_rows_follow_recbole_internal_ids(pics):
    store, dataset, _ = load_store(pics.parent)
    pixels = store.pixels()
    assert pixels.shape == (dataset.item_num, 3, 8, 8) and pixels.dtype == torch.float32
    assert torch.all(pixels[0] == 0) and not store.has_image[0] and store.has_image[1:].all()
    assert store.item_texts()[0] == "" and store.item_hashes[0] == ""
    tokens = dataset.id2token(dataset.iid_field, np.arange(dataset.item_num))
    for iid in range(1, dataset.item_num):
        k = int(tokens[iid][1:])
        expected = torch.tensor(colour(k), dtype=torch.float32) / 255
        assert torch.allclose(pixels[iid, :, 3, 3], expected, atol=1 / 255), tokens[iid]
        assert store.item_texts()[iid] == f"item number  {k}"  # exact text, double space kept
    assert len(set(store.item_hashes[1:])) == N_ITEMS


def test_pixels_are_a_read_only_memory_map_of_the_cache(pics):
    store, dataset, _ = load_store(pics.parent)
    rows = store._pixels_u8  # what the store holds: a map of the cache file, not the pixels
    assert isinstance(rows.values, np.memmap) and not rows.values.flags.writeable
    assert Path(rows.values.filename).parent == pics / ".cache" / "pixels"
    i3 = dataset.token2id(dataset.iid_field, "i3")
    assert torch.allclose(store.pixels([i3, 0])[:, :, 3, 3], torch.tensor([colour(3), (0, 0, 0)]) / 255, atol=1 / 255)
    assert copy.deepcopy(rows) is rows  # a model copy (the RL reference) shares the map


def test_image_size_64_and_non_square_padding(tmp_path):
    folder = write_image_dataset(tmp_path / "data")
    Image.new("RGB", (40, 20), (255, 0, 0)).save(folder / "images" / "i1.png")
    store, dataset, _ = load_store(folder.parent, image_size=64)
    row = store.pixels()[dataset.token2id(dataset.iid_field, "i1")]
    assert row.shape == (3, 64, 64)
    assert torch.allclose(row[:, 32, 32], torch.tensor([1.0, 0, 0]))  # the picture, centred
    assert torch.allclose(row[:, 2, 32], torch.ones(3))  # padded with white above and below


def test_second_load_is_served_from_cache_and_a_changed_image_invalidates_only_it(pics, count_decodes):
    store, dataset, _ = load_store(pics.parent)
    assert len(count_decodes) == N_ITEMS
    computed = []

    def compute(idx, pixels):
        computed.append(idx.tolist())
        return pixels.mean(dim=(2, 3)).numpy()

    features = store.cached("mean-colour", {"v": 1}, compute)
    assert features.shape == (dataset.item_num, 3) and np.all(features[0] == 0)
    assert sorted(computed[0]) == list(range(1, dataset.item_num))

    count_decodes.clear(), computed.clear()
    again, _, _ = load_store(pics.parent)
    assert count_decodes == []
    assert torch.equal(again.pixels(), store.pixels())
    assert np.array_equal(again.cached("mean-colour", {"v": 1}, compute), features) and computed == []
    again.cached("mean-colour", {"v": 2}, compute)  # another setting: another entry
    assert len(computed[0]) == N_ITEMS

    Image.new("RGB", (16, 16), (1, 2, 3)).save(pics / "images" / "i5.png")  # change one image
    count_decodes.clear(), computed.clear()
    changed, _, _ = load_store(pics.parent)
    i5 = dataset.token2id(dataset.iid_field, "i5")
    assert count_decodes == ["i5.png"]
    new_features = changed.cached("mean-colour", {"v": 1}, compute)
    assert computed == [[i5]]
    keep = np.arange(dataset.item_num) != i5
    assert np.array_equal(new_features[keep], features[keep]) and not np.allclose(new_features[i5], features[i5])
    cache = pics / ".cache"
    assert cache.is_dir() and not list(cache.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_cache_dir_setting(pics, tmp_path):
    store, _, _ = load_store(pics.parent, cache_dir=str(tmp_path / "elsewhere"))
    assert list((tmp_path / "elsewhere" / "pixels").glob("*.rows")) and not (pics / ".cache").exists()


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_png_names_item_and_file(pics):
    Image.new("RGB", (64, 64), (10, 200, 30)).save(pics / "images" / "i4.png")
    truncate(pics / "images" / "i4.png")
    with pytest.raises(ItemImageError, match=r"unreadable \(1\): item 'i4' -> images/i4.png") as error:
        load_store(pics.parent)
    assert "image_policy" in str(error.value)


def test_not_an_image_names_item_and_file(pics):
    (pics / "images" / "i2.png").write_text("this is not a PNG")
    with pytest.raises(ItemImageError, match=r"item 'i2' -> images/i2.png \(UnidentifiedImageError"):
        load_store(pics.parent)


def test_missing_file_and_item_without_image(pics):
    (pics / "images" / "i3.png").unlink()
    lines = (pics / "pics.item").read_text().splitlines()
    lines[7] = lines[7].rsplit("\t", 1)[0] + "\t"  # i7: empty image cell
    (pics / "pics.item").write_text("\n".join(lines) + "\n")
    with pytest.raises(ItemImageError) as error:
        load_store(pics.parent)
    message = str(error.value)
    assert "2 item image problem(s)" in message
    assert "missing file (1): item 'i3' -> images/i3.png" in message
    assert "no image (1): item 'i7'" in message


def test_many_problems_show_the_first_ten_and_the_count(tmp_path):
    folder = write_image_dataset(tmp_path / "data", n_items=30)
    for i in range(1, 26):
        (folder / "images" / f"i{i}.png").unlink()
    with pytest.raises(ItemImageError, match=r"missing file \(25\): .* and 15 more"):
        load_store(folder.parent)


def test_image_folder_convention_and_image_for_unknown_item(tmp_path):
    folder = write_image_dataset(tmp_path / "data", image_column=False)
    store, dataset, _ = load_store(folder.parent)  # images/<item token>.png, no .item column
    assert store.has_image[1:].all()
    Image.new("RGB", (16, 16)).save(folder / "images" / "i999.png")
    with pytest.raises(ItemImageError, match=r"image for unknown item \(1\): item 'i999' -> images/i999.png"):
        load_store(folder.parent)


def test_stray_file_with_image_column_is_logged_not_fatal(pics, caplog):
    Image.new("RGB", (16, 16)).save(pics / "images" / "unused.png")
    with caplog.at_level(logging.WARNING):
        store, _, _ = load_store(pics.parent)
    assert store.has_image[1:].all() and "unused.png" in caplog.text


def test_no_images_at_all_says_how_to_attach_them(tmp_path):
    folder = write_image_dataset(tmp_path / "data", image_column=False)
    for f in (folder / "images").iterdir():
        f.unlink()
    (folder / "images").rmdir()
    with pytest.raises(ItemImageError, match="no item images.*image_field.*image_dir"):
        load_store(folder.parent)


def test_rgba_palette_grey_and_16_bit_are_converted_not_black(pics):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[4:12, 4:12] = (255, 0, 0, 255)  # opaque red square on a fully transparent (black) field
    Image.fromarray(rgba, "RGBA").save(pics / "images" / "i1.png")
    Image.new("RGB", (16, 16), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE).save(pics / "images" / "i2.png")
    Image.new("L", (16, 16), 200).save(pics / "images" / "i3.png")
    Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)).save(pics / "images" / "i4.png")  # 16-bit grey
    assert Image.open(pics / "images" / "i4.png").mode.startswith("I")
    store, dataset, _ = load_store(pics.parent, image_size=16)
    px = store.pixels()

    def row(token):
        return px[dataset.token2id(dataset.iid_field, token)]

    assert torch.allclose(row("i1")[:, 8, 8], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(row("i1")[:, 0, 0], torch.ones(3))  # transparent -> white background, not black
    assert torch.allclose(row("i2")[:, 8, 8], torch.tensor([0, 128, 255]) / 255, atol=2 / 255)
    assert torch.allclose(row("i3")[:, 8, 8], torch.full((3,), 200 / 255))
    assert torch.allclose(row("i4")[:, 8, 8], torch.full((3,), 0.5), atol=1 / 255)  # scaled, not clipped to white


def test_placeholder_policy_keeps_the_item_with_a_grey_image(pics, caplog):
    truncate(pics / "images" / "i6.png")
    with caplog.at_level(logging.WARNING):
        store, dataset, _ = load_store(pics.parent, image_policy="placeholder")
    i6 = dataset.token2id(dataset.iid_field, "i6")
    assert not store.has_image[i6] and int(store.has_image.sum()) == N_ITEMS - 1
    assert torch.allclose(store.pixels()[i6], torch.full((3, 8, 8), 128 / 255))
    assert "image_policy=placeholder: 1 item(s)" in caplog.text


def test_skip_policy_drops_the_item_from_the_dataset(pics):
    (pics / "images" / "i6.png").unlink()
    store, dataset, _ = load_store(pics.parent, image_policy="skip")
    assert dataset.item_num == N_ITEMS  # 11 items + padding
    assert "i6" not in set(dataset.field2id_token[dataset.iid_field])
    assert store.has_image[1:].all()
    inter_items = dataset.inter_feat[dataset.iid_field]
    assert inter_items.min() >= 1


def test_unknown_policy_is_refused(pics):
    with pytest.raises(ValueError, match="image_policy must be one of error, skip, placeholder"):
        load_store(pics.parent, image_policy="ignore")


def test_embeddings_stay_out_of_normalisation(pics):
    """Cached features live in the store, never in RecBole's fields, so normalize_all cannot reach them."""
    store, _, config = load_store(pics.parent, normalize_all=True)
    features = np.asarray(store.cached("emb", {}, lambda idx, px: px.flatten(1).numpy() * 10 - 3))
    assert features.max() > 1.0 and features.min() < 0.0


def test_an_artifact_asked_for_while_it_is_built_is_built_once(tmp_path):
    """Two benchmark rows that start together (jobs: 2) and need the same image tokenizer: one trains it, the other
    waits for it and loads it."""
    cache, builds = ArtifactCache(tmp_path, lambda: contextlib.nullcontext()), []

    def build():
        builds.append(threading.get_ident())
        time.sleep(0.5)
        return {"w": torch.arange(3.0)}, {"steps": 1}

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.load_or_build("vq/vq", "k", build, "a tokenizer")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(results) == 2
    assert all(torch.equal(state["w"], torch.arange(3.0)) and info["steps"] == 1 for state, info in results)

"""Dataset importers (docs/data.md, "Importing public datasets"): raw Amazon Reviews 2023, H&M and
PixelRec/MicroLens files written here as small fixtures become RecBole folders that train SASRec and
load their images; malformed input names file and line and leaves nothing; the image downloader runs
against a loopback HTTP server."""
import argparse
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import signal
import threading
import time
import zlib
from pathlib import Path

import pytest
import yaml
from PIL import Image

from recbole_gen.config import Config
from recbole_gen.data import ItemImageStore
from recbole_gen.data.importers import (DatasetImportError, ImportOptions, add_arguments, import_dataset, report,
                                        run_import)
from recbole_gen.data.importers.download import download_images

DUPLICATE = "duplicate (same user, item and timestamp)"
ONE_DUPLICATE = {DUPLICATE: {"interactions": 1, "users": 0, "items": 0}}

# ----------------------------------------------------------------------------- fixtures: Amazon Reviews 2023

T0_MS = 1_600_000_000_000
SEQUENCES = {  # user -> items in time order; U08's single review and B009 fall to a k-core
    "U01": ["B001", "B002", "B003", "B004", "B005"],
    "U02": ["B002", "B003", "B004", "B005", "B006"],
    "U03": ["B003", "B004", "B005", "B006", "B007"],
    "U04": ["B004", "B005", "B006", "B007", "B001"],
    "U05": ["B005", "B006", "B007", "B001", "B002"],
    "U06": ["B006", "B007", "B001", "B002", "B010"],
    "U07": ["B007", "B001", "B002", "B003", "B010"],
    "U08": ["B009"],
}
TITLES = {f"B{i:03d}": f"Toy {i}" for i in range(1, 11)} | {
    "B003": "Robot\tdog\nwith lights",  # a tab and a newline would split RecBole's rows
    "B004": "Café ☕ Puzzle — 1000 Teile",
    "B005": '"Frozen" doll',  # a leading quote would make pandas read a quoted field
    "B099": "never reviewed",
}
WITHOUT_IMAGE = {"B010"}
EXTENSION = {"B004": ".jpg"}  # the rest are PNGs


def colour(i):
    return ((53 * i) % 256, (97 * i) % 256, (191 * i) % 256)


def save_image(path, i, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour(i)).save(path)


def write_jsonl_gz(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(record if isinstance(record, str) else json.dumps(record, ensure_ascii=False))
            f.write("\n")


def review_ms(user, step):
    return T0_MS + int(user[1:]) * 86_400_000 + step * 3_600_000 + 123


def review(user, item, ms, rating=4.0):
    return {"rating": rating, "title": "ok", "text": "Great\tfun\nreally — ünïcode", "images": [],
            "asin": item + "V",
            "parent_asin": item, "user_id": user, "timestamp": ms, "helpful_vote": 0, "verified_purchase": True}


def write_amazon(raw, images, url=lambda item: f"https://m.media-amazon.com/images/I/{item}._AC_.jpg"):
    """``raw/Toys.jsonl.gz`` (38 lines: 37 reviews and one exact duplicate; U02 buys B006 twice) and
    ``raw/meta_Toys.jsonl.gz``; ``images/<asin>.png|jpg`` for every item but B010."""
    reviews = [review(u, item, review_ms(u, step), rating=float(1 + step)) for u, items in SEQUENCES.items()
               for step, item in enumerate(items)]
    duplicate = json.dumps(review("U01", "B002", review_ms("U01", 1), rating=2.0), ensure_ascii=False)
    lines = reviews[:1] + [duplicate] + reviews[1:] + [review("U02", "B006", review_ms("U02", 10))]
    write_jsonl_gz(raw / "Toys.jsonl.gz", lines)
    meta = [{"main_category": "Toys & Games", "title": title, "average_rating": 4.5, "features": ["a\tb"],
             "images": [{"thumb": url(item) + "?thumb", "large": url(item), "hi_res": None, "variant": "MAIN"}],
             "categories": ["Toys & Games", "Puzzles"], "parent_asin": item} for item, title in TITLES.items()]
    write_jsonl_gz(raw / "meta_Toys.jsonl.gz", meta)
    for i, item in enumerate(TITLES, start=1):
        if item not in WITHOUT_IMAGE:
            save_image(images / f"{item}{EXTENSION.get(item, '.png')}", i)
    return raw


def parse(argv):
    parser = argparse.ArgumentParser(prog="recbole-gen import-dataset")
    add_arguments(parser)
    return parser.parse_args(argv)


def amazon_options(raw, out, **overrides):
    return ImportOptions(**{"input": raw, "output": out, "images": raw.parent / "img", "category": "Toys", **overrides})


@pytest.fixture(scope="module")
def amazon_import(tmp_path_factory):
    """The issue's command on the fixture; returns (dataset folder, console report, raw folder)."""
    root = tmp_path_factory.mktemp("amazon")
    raw = write_amazon(root / "raw", root / "img")
    args = parse(["amazon2023", "--input", str(raw), "--category", "Toys", "--images", str(root / "img"),
                  "--output", str(root / "dataset" / "toys"), "--k-core", "0"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        out = run_import(args)
    return out, printed.getvalue(), raw


# ----------------------------------------------------------------------------- Amazon


def test_amazon_atomic_files_are_exact(amazon_import):
    out, _, _ = amazon_import
    assert out.name == "toys" and sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["images", "manifest.json", "toys.inter", "toys.item", "toys.yaml"]
    inter = (out / "toys.inter").read_text(encoding="utf-8").splitlines()
    assert inter[0] == "user_id:token\titem_id:token\ttimestamp:float\trating:float"
    assert len(inter) == 1 + 37  # 38 review lines less the exact duplicate
    assert inter[1:6] == [  # ms -> seconds, to the millisecond; the duplicate of B002 is gone
        "U01\tB001\t1600086400.123\t1", "U01\tB002\t1600090000.123\t2", "U01\tB003\t1600093600.123\t3",
        "U01\tB004\t1600097200.123\t4", "U01\tB005\t1600100800.123\t5"]
    u02 = [line.split("\t")[1] for line in inter if line.startswith("U02\t")]
    assert u02 == ["B002", "B003", "B004", "B005", "B006", "B006"]  # the repeat purchase stays, in time order
    assert (out / "toys.item").read_text(encoding="utf-8").splitlines() == [
        "item_id:token\ttitle:token_seq\timage:token",
        "B001\tToy 1\timages/B001.png",
        "B002\tToy 2\timages/B002.png",
        "B003\tRobot dog with lights\timages/B003.png",
        "B004\tCafé ☕ Puzzle — 1000 Teile\timages/B004.jpg",
        "B005\t“Frozen\" doll\timages/B005.png",
        "B006\tToy 6\timages/B006.png",
        "B007\tToy 7\timages/B007.png",
        "B009\tToy 9\timages/B009.png",
        "B010\tToy 10\t",  # no image: kept for rankers, reported
    ]
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "B001.png", "B002.png", "B003.png", "B004.jpg", "B005.png", "B006.png", "B007.png", "B009.png"]
    assert (out / "images" / "B004.jpg").read_bytes() == (out.parent.parent / "img" / "B004.jpg").read_bytes()
    assert [p.name for p in out.parent.iterdir() if "staging" in p.name] == []  # the staged copy was swapped in


def test_amazon_manifest_and_console_report(amazon_import):
    out, printed, raw = amazon_import
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["importer"] == "amazon2023" and manifest["dataset"] == "toys"
    assert manifest["counts"] == {"users": 8, "items": 9, "interactions": 37, "items_with_image": 8,
                                  "items_without_image": 1}
    assert manifest["dropped"] == ONE_DUPLICATE
    assert manifest["items_without_image"] == {"count": 1, "examples": ["B010"]}
    assert manifest["items_without_metadata"] == {"count": 0, "examples": []}
    assert manifest["images"] == {"copied": 8}
    assert [(i["file"], i["lines"]) for i in manifest["inputs"]] == [("Toys.jsonl.gz", 38), ("meta_Toys.jsonl.gz", 11)]
    for entry in manifest["inputs"]:
        data = (raw / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert manifest["options"]["k_core"] == 0 and manifest["options"]["category"] == "Toys"
    assert printed.splitlines() == [
        f"imported amazon2023 into {out}: 8 users, 9 items, 37 interactions (timestamps in seconds)",
        "  dropped 1 interaction(s), 0 user(s), 0 item(s): duplicate (same user, item and timestamp)",
        "  1 item(s) without an image, kept for rankers (e.g. B010); train image models with image_policy "
        "placeholder or skip, or import with --require-images",
        f"  images: 8 copied into {out / 'images'}",
        f"  manifest: {out / 'manifest.json'}",
    ]


def test_an_imported_folder_trains_with_its_own_yaml_and_builds_the_image_store(amazon_import):
    """No hand-written config: the folder's toys.yaml loads the timestamp (RecBole's default load_col drops it) and
    gives the item without an image the placeholder."""
    from recbole_gen.cli import run_recbole_main

    out, _, _ = amazon_import
    assert yaml.safe_load((out / "toys.yaml").read_text()) == {
        "load_col": {"inter": ["user_id", "item_id", "timestamp", "rating"], "item": ["item_id", "title", "image"]},
        "image_policy": "placeholder"}
    assert run_recbole_main(["--model=SASRec", "--dataset=toys", f"--data_path={out.parent}"]) == 0
    assert len(list(Path("saved").glob("SASRec-*.pth"))) == 1

    config = Config(model="SASRec", dataset="toys", config_dict={"data_path": str(out.parent), "image_size": 8})
    tokens = ["[PAD]", "B003", "B004", "B010"]
    store = ItemImageStore.from_tokens(config, tokens)
    assert store.has_image.tolist() == [False, True, True, False]
    assert store.item_texts() == ["", "Robot dog with lights", "Café ☕ Puzzle — 1000 Teile", "Toy 10"]
    assert store.pixels()[1, :, 0, 0].mul(255).round().tolist() == list(colour(3))  # B003, the 3rd item written


def test_amazon_k_core(tmp_path):
    raw = write_amazon(tmp_path / "raw", tmp_path / "img")
    manifest = import_dataset("amazon2023", amazon_options(raw, tmp_path / "out" / "toys3", k_core=3))
    # U08 and B009 have one interaction each; without them B010 has two
    assert manifest["counts"] == {"users": 7, "items": 7, "interactions": 34, "items_with_image": 7,
                                  "items_without_image": 0}
    assert manifest["dropped"]["k-core (user or item with fewer than 3 interactions)"] == \
        {"interactions": 3, "users": 1, "items": 2}
    inter = [line.split("\t") for line in (tmp_path / "out" / "toys3" / "toys3.inter").read_text().splitlines()[1:]]
    assert sorted({row[0] for row in inter}) == [f"U0{u}" for u in range(1, 8)]
    assert sorted({row[1] for row in inter}) == [f"B00{i}" for i in range(1, 8)]


def test_amazon_require_images_links_them(tmp_path):
    raw = write_amazon(tmp_path / "raw", tmp_path / "img")
    out = tmp_path / "out" / "toys"
    manifest = import_dataset("amazon2023", amazon_options(raw, out, require_images=True, link=True))
    assert manifest["dropped"]["item without an image (--require-images)"] == \
        {"interactions": 2, "users": 0, "items": 1}
    assert manifest["counts"] == {"users": 8, "items": 8, "interactions": 35, "items_with_image": 8,
                                  "items_without_image": 0}
    assert manifest["images"] == {"linked": 8}
    linked, source = (out / "images" / "B004.jpg").stat(), (tmp_path / "img" / "B004.jpg").stat()
    assert linked.st_ino == source.st_ino and source.st_nlink == 2


def test_amazon_max_users_is_a_seeded_sample(tmp_path):
    raw = write_amazon(tmp_path / "raw", tmp_path / "img")
    first = import_dataset("amazon2023", amazon_options(raw, tmp_path / "a" / "toys", max_users=5, seed=7))
    again = import_dataset("amazon2023", amazon_options(raw, tmp_path / "b" / "toys", max_users=5, seed=7))
    inter = (tmp_path / "a" / "toys" / "toys.inter").read_text()
    assert inter == (tmp_path / "b" / "toys" / "toys.inter").read_text()  # the same seed, the same users
    users = sorted({line.split("\t")[0] for line in inter.splitlines()[1:]})
    assert len(users) == 5 and set(users) <= set(SEQUENCES)
    expected = sum(len(SEQUENCES[u]) for u in users) + ("U02" in users)  # U02 bought B006 twice
    assert first["counts"]["interactions"] == again["counts"]["interactions"] == expected
    assert first["dropped"]["user not in the --max-users sample"]["users"] == 3


def test_options_are_checked():
    with pytest.raises(DatasetImportError, match="--k-core must be 0 or more, not -1"):
        ImportOptions(input="raw", output="out", k_core=-1)
    with pytest.raises(DatasetImportError, match="--max-users must be 1 or more, not 0"):
        ImportOptions(input="raw", output="out", max_users=0)
    assert ImportOptions(input="raw", output="out").images == Path("raw", "images")


def test_an_existing_output_needs_force(tmp_path):
    raw = write_amazon(tmp_path / "raw", tmp_path / "img")
    out = tmp_path / "toys"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(DatasetImportError, match=re.escape(f"{out} already exists (use --force to replace it)")):
        import_dataset("amazon2023", amazon_options(raw, out))
    import_dataset("amazon2023", amazon_options(raw, out, force=True))
    assert not (out / "old.txt").exists() and (out / "toys.inter").is_file()


# ----------------------------------------------------------------------------- malformed input


def _truncated(raw):
    """Cut Toys.jsonl.gz in half; return the line the import must name (the first incomplete one)."""
    path = raw / "Toys.jsonl.gz"
    write_jsonl_gz(path, [review(f"U{u:03d}", f"B{u % 7:03d}", T0_MS + u) for u in range(400)])
    data = path.read_bytes()
    cut = data[: len(data) // 2]
    path.write_bytes(cut)
    return zlib.decompressobj(wbits=31).decompress(cut).count(b"\n") + 1


def _missing_field(raw):
    lines = gzip.open(raw / "Toys.jsonl.gz", "rt", encoding="utf-8").read().splitlines()
    record = json.loads(lines[2])
    del record["user_id"]
    lines[2] = json.dumps(record)
    write_jsonl_gz(raw / "Toys.jsonl.gz", lines)
    return 3


def _bad_json(raw):
    lines = gzip.open(raw / "meta_Toys.jsonl.gz", "rt", encoding="utf-8").read().splitlines()
    lines[4] = lines[4][:30]
    write_jsonl_gz(raw / "meta_Toys.jsonl.gz", lines)
    return 5


@pytest.mark.parametrize("break_it, file, reason", [
    (_truncated, "Toys.jsonl.gz", "truncated gzip (the file ends early)"),
    (_missing_field, "Toys.jsonl.gz", "missing field 'user_id'"),
    (_bad_json, "meta_Toys.jsonl.gz", "bad JSON (Unterminated string starting at: column 19)"),
])
def test_malformed_input_names_file_and_line_and_leaves_nothing(tmp_path, break_it, file, reason):
    raw = write_amazon(tmp_path / "raw", tmp_path / "img")
    line = break_it(raw)
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    with pytest.raises(DatasetImportError) as error:
        import_dataset("amazon2023", amazon_options(raw, out_parent / "toys"))
    assert str(error.value) == f"{raw / file}, line {line}: {reason}"
    assert list(out_parent.iterdir()) == []


def test_an_unusable_image_fails_with_the_stores_message_and_leaves_nothing(tmp_path):
    raw = write_amazon(tmp_path / "raw", tmp_path / "img")
    (tmp_path / "img" / "B006.png").write_bytes((tmp_path / "img" / "B006.png").read_bytes()[:40])  # truncated PNG
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    with pytest.raises(DatasetImportError) as error:
        import_dataset("amazon2023", amazon_options(raw, out_parent / "toys"))
    message = str(error.value)
    assert message.startswith(f"nothing was written to {out_parent / 'toys'}: the item image store rejects the images")
    assert "unreadable (1): item 'B006' -> images/B006.png" in message
    assert list(out_parent.iterdir()) == []


# ----------------------------------------------------------------------------- H&M


def test_hm_keeps_leading_zeros_and_the_0xx_layout(tmp_path):
    raw = tmp_path / "hm"
    customers = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3)]
    c0, c1, c2 = customers
    (raw / "images").mkdir(parents=True)
    (raw / "transactions_train.csv").write_text(
        "t_dat,customer_id,article_id,price,sales_channel_id\n"
        f"2018-09-20,{c0},0108775015,0.0508,2\n"
        f"2018-09-20,{c0},0108775015,0.0508,2\n"  # two units on one day: an exact duplicate
        f"2018-09-21,{c0},0110065001,0.0203,2\n"
        f"2018-09-22,{c0},0108775015,0.0508,1\n"  # bought again another day: kept
        f"2018-09-20,{c1},0108775044,0.0305,2\n"
        f"2018-09-23,{c1},110065001,0.0203,1\n"  # an id that lost its leading zero
        f"2018-09-25,{c2},0111565001,0.0169,2\n")
    (raw / "articles.csv").write_text(
        "article_id,product_code,prod_name,product_type_name,colour_group_name,detail_desc\n"
        "0108775015,0108775,Strap top,Vest top,Black,\"Jersey top with narrow\nshoulder straps.\"\n"
        "0108775044,0108775,Strap top,Vest top,White,Jersey top.\n"
        "0110065001,0110065,OP T-shirt (Idro),Bra,Black,\"Microfibre T-shirt bra, underwired\"\n"
        "0111565001,0111565,20 den 1p Stockings,Underwear Tights,Black,Semi shiny nylon stockings.\n"
        "0999999001,0999999,Never sold,Hat,Red,\n")
    for i, article in enumerate(["0108775015", "0110065001", "0111565001", "0999999001"], start=1):
        save_image(raw / "images" / article[:3] / f"{article}.jpg", i)  # 0108775044 has no image
    manifest = import_dataset("hm", ImportOptions(input=raw, output=tmp_path / "data" / "hm"))
    out = tmp_path / "data" / "hm"
    assert (out / "hm.item").read_text().splitlines() == [
        "item_id:token\ttitle:token_seq\timage:token",
        "0108775015\tStrap top\timages/010/0108775015.jpg",
        "0108775044\tStrap top\t",
        "0110065001\tOP T-shirt (Idro)\timages/011/0110065001.jpg",
        "0111565001\t20 den 1p Stockings\timages/011/0111565001.jpg",
    ]
    assert (out / "hm.inter").read_text().splitlines()[1:] == sorted([  # midnight UTC of t_dat
        f"{c0}\t0108775015\t1537401600", f"{c0}\t0110065001\t1537488000", f"{c0}\t0108775015\t1537574400",
        f"{c1}\t0108775044\t1537401600", f"{c1}\t0110065001\t1537660800", f"{c2}\t0111565001\t1537833600"],
        key=lambda line: (line.split("\t")[0], line.split("\t")[2]))
    assert manifest["counts"] == {"users": 3, "items": 4, "interactions": 6, "items_with_image": 3,
                                  "items_without_image": 1}
    assert manifest["dropped"] == ONE_DUPLICATE
    assert [(i["file"], i["lines"]) for i in manifest["inputs"]] == [("transactions_train.csv", 8), ("articles.csv", 7)]


def test_hm_malformed_csv_row_names_file_and_line(tmp_path):
    raw = tmp_path / "hm"
    (raw / "images").mkdir(parents=True)
    (raw / "transactions_train.csv").write_text("t_dat,customer_id,article_id,price,sales_channel_id\n"
                                                 "2018-09-20,c0,0108775015,0.05,2\n2018-09-20,c1,0.05,2\n")
    with pytest.raises(DatasetImportError) as error:
        import_dataset("hm", ImportOptions(input=raw, output=tmp_path / "out" / "hm"))
    assert str(error.value) == f"{raw / 'transactions_train.csv'}, line 3: 4 fields, the header has 5"
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- PixelRec / MicroLens


def test_pixelrec_ties_and_duplicate_rows(tmp_path):
    raw = tmp_path / "pixelrec"
    (raw / "covers").mkdir(parents=True)
    (raw / "Pixel200K.csv").write_text(
        "item_id,user_id,timestamp\n"
        "i2,u1,1650000000\n"
        "i1,u1,1650000000\n"  # tied with the row above: both stay, in file order
        "i3,u1,1650000100\n"
        "i2,u2,1650000050\n"
        "i2,u2,1650000050\n"  # duplicate row
        "i1,u2,1650000200\n"
        "i4,u3,1650000300\n")
    (raw / "Pixel200K_items.csv").write_text(
        "item_id,view_number,comment_number,thumbup_number,share_number,coin_number,favorite_number,"
        "barrage_number,title,tag,description\n"
        "i1,10,1,2,0,0,1,3,\"猫咪视频, 第一集\",animals,cute\n"
        "i2,5,0,1,0,0,0,0,Lo-fi beats,music,\n"
        "i3,7,0,0,0,0,0,0,\"Tab\there\",misc,\n"
        "i4,1,0,0,0,0,0,0,No cover,misc,\n")
    for i, item in enumerate(["i1", "i2", "i3"], start=1):
        save_image(raw / "covers" / f"{item}.jpg", i)
    manifest = import_dataset("pixelrec", ImportOptions(input=raw, output=tmp_path / "data" / "pixel",
                                                        images=raw / "covers"))
    out = tmp_path / "data" / "pixel"
    assert (out / "pixel.inter").read_text().splitlines() == [
        "user_id:token\titem_id:token\ttimestamp:float",
        "u1\ti2\t1650000000", "u1\ti1\t1650000000", "u1\ti3\t1650000100",
        "u2\ti2\t1650000050", "u2\ti1\t1650000200",
        "u3\ti4\t1650000300"]
    assert (out / "pixel.item").read_text(encoding="utf-8").splitlines() == [
        "item_id:token\ttitle:token_seq\timage:token",
        "i1\t猫咪视频, 第一集\timages/i1.jpg", "i2\tLo-fi beats\timages/i2.jpg",
        "i3\tTab here\timages/i3.jpg", "i4\tNo cover\t"]
    assert manifest["dropped"] == ONE_DUPLICATE
    assert manifest["items_without_image"] == {"count": 1, "examples": ["i4"]}


def test_microlens_headers_and_millisecond_timestamps(tmp_path):
    raw = tmp_path / "microlens"
    (raw / "MicroLens-50k_covers").mkdir(parents=True)
    (raw / "MicroLens-50k_pairs.csv").write_text(
        "user,item,timestamp\n1,10,1583378161354\n1,11,1583378162000\n2,10,1583378163999\n")
    (raw / "MicroLens-50k_titles.csv").write_text("item,title\n10,Sunset timelapse\n11,Cooking noodles\n")
    for i, item in enumerate(["10", "11"], start=1):
        save_image(raw / "MicroLens-50k_covers" / f"{item}.jpg", i)
    manifest = import_dataset("microlens", ImportOptions(input=raw, output=tmp_path / "ml50k",
                                                         images=raw / "MicroLens-50k_covers"))
    assert (tmp_path / "ml50k" / "ml50k.inter").read_text().splitlines()[1:] == [
        "1\t10\t1583378161.354", "1\t11\t1583378162", "2\t10\t1583378163.999"]
    assert manifest["counts"]["items_with_image"] == 2


# ----------------------------------------------------------------------------- the downloader


def png_bytes(i):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour(i)).save(buffer, format="PNG")
    return buffer.getvalue()


class ImageServer(http.server.ThreadingHTTPServer):
    """Serves /ok/, /slow/ (0.3 s late), /flaky/ (503 once), /missing/ (404), /corrupt/ (not an image),
    /stall/ (half the body, then silence past the client's timeout) and /interrupt/ (sends this process
    a SIGINT, as Ctrl-C would, then the image)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ImageHandler)
        self.requests, self.seen = [], set()

    def url(self, path):
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class ImageHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server, kind = self.server, self.path.split("/")[1]
        server.requests.append(self.path)
        body = png_bytes(len(self.path))
        if kind == "missing":
            return self.send_error(404, "Not Found")
        if kind == "flaky" and self.path not in server.seen:
            server.seen.add(self.path)
            return self.send_error(503, "Busy")
        if kind == "slow":
            time.sleep(0.3)
        if kind == "corrupt":
            body = b"<html>this is not an image</html>"
        if kind == "interrupt":
            os.kill(os.getpid(), signal.SIGINT)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "stall":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(1.5)
            return
        self.wfile.write(body)


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    httpd = ImageServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_download_images_through_the_importer(tmp_path, server):
    kinds = {"B001": "ok", "B002": "slow", "B003": "flaky", "B004": "missing", "B005": "corrupt", "B006": "stall",
             "B007": "ok", "B009": "ok", "B010": "ok"}
    raw = write_amazon(tmp_path / "raw", tmp_path / "unused",
                       url=lambda item: server.url(f"/{kinds.get(item, 'ok')}/{item}.jpg"))
    options = amazon_options(raw, tmp_path / "out" / "toys", images=tmp_path / "img", download_images=True,
                             download_workers=4, download_retries=1, download_timeout=0.5)
    manifest = import_dataset("amazon2023", options)
    download = manifest["download"]
    assert download["fetched"] == 6 and download["present"] == 0
    assert download["failed"]["B004.jpg"] == "HTTP 404 Not Found"
    assert download["failed"]["B005.jpg"].startswith("not an image (UnidentifiedImageError: cannot identify image file")
    assert download["failed"]["B006.jpg"] == "timed out (after 2 tries)"  # half a body, then silence
    assert sorted(download["failed"]) == ["B004.jpg", "B005.jpg", "B006.jpg"]
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [  # nothing partial, nothing corrupt, no temp file
        "B001.jpg", "B002.jpg", "B003.jpg", "B007.jpg", "B009.jpg", "B010.jpg"]
    assert server.requests.count("/flaky/B003.jpg") == 2 and server.requests.count("/missing/B004.jpg") == 1
    assert manifest["items_without_image"] == {"count": 3, "examples": ["B004", "B005", "B006"]}
    assert "B099" not in "".join(server.requests)  # only items left in the dataset are fetched
    printed = report(manifest, options.output).splitlines()
    assert printed[3:7] == ["  download: 6 fetched, 0 already there, 3 failed", "    B004.jpg: HTTP 404 Not Found",
                            f"    B005.jpg: {download['failed']['B005.jpg']}",
                            f"    B006.jpg: {download['failed']['B006.jpg']}"]


@pytest.fixture
def python_sigint():
    """Ctrl-C raises KeyboardInterrupt only where SIGINT is not ignored: a job started in the background by a
    non-interactive shell (a CI runner, `cmd &`) inherits SIG_IGN, so install Python's own handler while testing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_download_resumes_after_an_interrupt(tmp_path, server, python_sigint):
    folder = tmp_path / "img"
    folder.mkdir()
    (folder / "e.png").write_bytes(png_bytes(1)[:30])  # a broken leftover: fetched again
    names = ["e", "a", "b", "stop", "c", "d"]
    jobs = [(folder / f"{n}.png", server.url(f"/{'interrupt' if n == 'stop' else 'ok'}/{n}.png")) for n in names]
    with pytest.raises(KeyboardInterrupt):
        download_images(jobs, workers=1, retries=0, timeout=5)
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png", "e.png", "stop.png"]  # no partial file
    assert all(Image.open(p).size == (8, 8) for p in folder.iterdir())
    server.requests.clear()
    report = download_images(jobs, workers=2, retries=0, timeout=5)
    assert sorted(server.requests) == ["/ok/c.png", "/ok/d.png"]
    assert (report.fetched, report.present, report.failed) == (2, 4, {})

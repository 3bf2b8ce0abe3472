"""Amazon Reviews 2023 (McAuley Lab): ``<Category>.jsonl.gz`` and ``meta_<Category>.jsonl.gz``.

A review is an interaction: ``user_id``, ``parent_asin`` (the item), ``rating`` and ``timestamp`` (in
milliseconds; written in seconds). An item's text is its ``title``; its picture is its main image
(the ``images`` entry whose ``variant`` is ``MAIN``, else the first), found in the image folder as
``<parent_asin>.<ext>`` or downloaded from that entry's ``large`` URL, else ``hi_res``.
"""
from recbole_gen.data.importers.common import DatasetImportError, Importer, Item, find_file
from recbole_gen.data.importers.interactions import Interactions


def _file(options, prefix):
    if not options.category:
        raise DatasetImportError("amazon2023 needs --category, the stem of the published files: --category "
                                 "Toys_and_Games reads Toys_and_Games.jsonl.gz and meta_Toys_and_Games.jsonl.gz")
    stem = f"{prefix}{options.category}"
    what = "item metadata file" if prefix else "reviews file"
    return find_file(options.input, [f"{stem}.jsonl.gz", f"{stem}.jsonl"], what)


def read_interactions(options, inputs):
    interactions = Interactions(with_rating=True)
    for record in inputs.jsonl(_file(options, "")):
        interactions.add(record.token("user_id"), record.token("parent_asin"),
                         record.number("timestamp") / 1000.0, record.number("rating"))
    return interactions


def read_items(options, inputs, tokens):
    items = {}
    for record in inputs.jsonl(_file(options, "meta_")):
        token = record.token("parent_asin")
        if token in tokens and token not in items:
            items[token] = Item(title=record.text("title"), url=main_image_url(record))
    return items


def main_image_url(record):
    """The main image's URL: the ``MAIN`` variant (else the first image), ``large`` else ``hi_res``."""
    images = [image for image in record.data.get("images") or [] if isinstance(image, dict)]
    main = next((image for image in images if image.get("variant") == "MAIN"), images[0] if images else {})
    return main.get("large") or main.get("hi_res") or None


IMPORTER = Importer(read_interactions, read_items, image_urls=True)

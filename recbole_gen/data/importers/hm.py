"""H&M Personalized Fashion Recommendations (Kaggle): ``transactions_train.csv``, ``articles.csv`` and
``images/0XX/<article_id>.jpg``.

A transaction row (``t_dat``, ``customer_id``, ``article_id``, ...) is an interaction at midnight UTC
of its day; an article's text is its ``prod_name``. Article ids are 10-digit text whose leading zero
is part of the id (``0108775015``, as the image file names have it); an id that lost its zeros to a
spreadsheet or pandas is padded back. Not every article has an image.
"""
import datetime
import functools

from recbole_gen.data.importers.common import Importer, Item
from recbole_gen.data.importers.interactions import Interactions

ARTICLE_ID_DIGITS = 10


def _article(record):
    return record.token("article_id").zfill(ARTICLE_ID_DIGITS)


@functools.lru_cache(maxsize=None)  # a few hundred distinct days among tens of millions of rows
def _midnight(day):
    try:
        return datetime.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


def read_interactions(options, inputs):
    interactions = Interactions()
    columns = {"t_dat": ("t_dat",), "customer_id": ("customer_id",), "article_id": ("article_id",)}
    for record in inputs.csv(options.input / "transactions_train.csv", columns):
        seconds = _midnight(record.require("t_dat"))
        if seconds is None:
            raise record.error(f"t_dat is not a YYYY-MM-DD date: {record.data['t_dat']!r}")
        interactions.add(record.token("customer_id"), _article(record), seconds)
    return interactions


def read_items(options, inputs, tokens):
    items = {}
    columns = {"article_id": ("article_id",), "prod_name": ("prod_name",)}
    for record in inputs.csv(options.input / "articles.csv", columns):
        token = _article(record)
        if token in tokens:
            items.setdefault(token, Item(title=record.text("prod_name")))
    return items


IMPORTER = Importer(read_interactions, read_items)

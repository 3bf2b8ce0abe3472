"""PixelRec and MicroLens (Westlake University): an interaction CSV, an item CSV and cover images.

The files go by several names (``Pixel200K.csv``, ``MicroLens-50k_pairs.csv``, ...), so they are told
apart by their header: the interaction file has a user, an item and a ``timestamp`` column (PixelRec:
``item_id,user_id,timestamp``; MicroLens: ``user,item,timestamp``), the item file an item and a
``title`` column and no user. ``--category`` narrows the search to files whose name contains it.
Timestamps are seconds, or milliseconds when larger than :data:`MS_ABOVE`, or ISO dates. Covers are
``<item id>.jpg`` in the image folder.
"""
import datetime

from recbole_gen.data.importers.common import DatasetImportError, Importer, Item, csv_header
from recbole_gen.data.importers.interactions import Interactions

USER = ("user_id", "user", "userID")
ITEM = ("item_id", "item", "videoID")
TIME = ("timestamp",)
TITLE = ("title", "title_en")
MS_ABOVE = 1e11  # as seconds, the year 5138: such a timestamp is in milliseconds


def _has(header, names):
    return any(name in header for name in names)


def _find(options, what, wanted):
    """The one CSV under the input folder whose header ``wanted(header)`` accepts."""
    files = sorted(p for p in options.input.rglob("*.csv") if not options.category or options.category in p.name)
    matches = [p for p in files if wanted(csv_header(p))]
    if len(matches) != 1:
        found = ", ".join(str(p) for p in matches) if matches else f"none among {len(files)} CSV file(s)"
        raise DatasetImportError(f"{options.input}: need exactly one {what} CSV, found {found}"
                                 + (" (narrow it down with --category)" if matches else ""))
    return matches[0]


def _seconds(record):
    value = record.require("time")
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise record.error(f"timestamp is neither a number nor an ISO date: {value!r}") from None
        return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)).timestamp()
    return seconds / 1000.0 if seconds > MS_ABOVE else seconds


def read_interactions(options, inputs):
    path = _find(options, "interaction (user, item, timestamp columns)",
                 lambda h: _has(h, USER) and _has(h, ITEM) and _has(h, TIME))
    interactions = Interactions()
    for record in inputs.csv(path, {"user": USER, "item": ITEM, "time": TIME}):
        interactions.add(record.token("user"), record.token("item"), _seconds(record))
    return interactions


def read_items(options, inputs, tokens):
    path = _find(options, "item (item and title columns, no user column)",
                 lambda h: _has(h, ITEM) and _has(h, TITLE) and not _has(h, USER))
    items = {}
    for record in inputs.csv(path, {"item": ITEM, "title": TITLE}):
        token = record.token("item")
        if token in tokens:
            items.setdefault(token, Item(title=record.text("title")))
    return items


IMPORTER = Importer(read_interactions, read_items)

"""gallery.png and gallery.html: for a seeded sample of test users, the history strip, the true next item, and what
each row shows the user: a generator's images (a drawn twin's: its ranker's top items redrawn) and a ranker's top
items' catalogue images (GenLMM's plan head, ``gen_rank_by: plan``, is a ranker here too), consumed items left out
under ``repeatable: False`` as in the evaluation; each tile's cosine to the true next item under the evaluation
encoder is written under it. The page opens with the metrics plot (results.png) and links the table."""
import html
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from recbole_gen.data import CONSUMED
from recbole_gen.model.generative import GenerativeRecommender
from recbole_gen.model.ties import tie_order, top_items

HISTORY_SHOWN = 5
TILE = 64
LABEL = 14


def pick_users(test_dataset, n, seed):
    """``n`` test rows chosen with ``seed`` (the same users for every row and every rerun)."""
    count = len(test_dataset.inter_feat)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=min(n, count), replace=False))


def _images_for_row(model, config, interaction, exclude, n_samples, seed, store):
    """[U, n, 3, S, S] pixels: a generator's samples, or a ranker's top-n catalogue items (``exclude``: items the
    users may not be shown, or None)."""
    if isinstance(model, GenerativeRecommender) and config["gen_rank_by"] != "plan":
        return model.generate_images(interaction, num_samples=n_samples, seed=seed, exclude=exclude).pixels
    scores = model.full_sort_predict(interaction).detach().cpu().reshape(len(interaction), -1)
    scores[:, 0] = -torch.inf
    if exclude is not None:
        scores.scatter_(1, exclude.cpu(), -torch.inf)
    top = top_items(scores, n_samples, tie_order(scores.shape[1], config["seed"]))
    pixels = store.pixels(top.flatten())
    return pixels.view(*top.shape, *pixels.shape[1:])


def collect_gallery(rows, n_users, n_samples, seed):
    """Load each row's checkpoint and gather the tiles; returns (columns, per-user tiles).

    Users and their histories come from the first sequential row's test split (a general model
    such as Pop has no item sequences; it scores the same users by id)."""
    from recbole_gen.checkpoint import load_checkpoint
    from recbole_gen.quick_start import load_data_and_model
    from recbole_gen.retrieval.catalogue import ImageCatalogue

    types = [load_checkpoint(row["model_file"])["config"]["MODEL_TYPE"] for row in rows]
    if "SEQUENTIAL" not in types:
        raise ValueError("the gallery needs at least one sequential row (it shows each user's history)")
    first = types.index("SEQUENTIAL")
    users, tiles = None, {}
    for row in [rows[first], *rows[:first], *rows[first + 1:]]:
        config, model, dataset, _, _, test_data = load_data_and_model(row["model_file"], checkpoint_paths=True)
        model.eval()
        if users is None:
            store = dataset.image_store
            catalogue = ImageCatalogue.from_config(config, store)
            picked = pick_users(test_data._dataset, n_users, seed)
            interaction = test_data.collate_fn(picked)[0]  # the evaluation's batch: consumed items included
            exclude = None if config["repeatable"] else interaction[CONSUMED]
            target_ids = interaction[config["ITEM_ID_FIELD"]]
            target_emb = catalogue.encode(store.pixels(target_ids))
            seq, lengths = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
            users = [{
                "user": str(dataset.id2token(dataset.uid_field, int(interaction[dataset.uid_field][i]))),
                "history": store.pixels(seq[i, max(0, int(lengths[i]) - HISTORY_SHOWN): int(lengths[i])]),
                "target": store.pixels(target_ids[i:i + 1])[0],
            } for i in range(len(picked))]
        with torch.no_grad():
            images = _images_for_row(model, config, interaction.to(config["device"]), exclude, n_samples, seed, store).cpu()
        emb = catalogue.encode(images.flatten(0, 1)).reshape(images.shape[0], images.shape[1], -1)
        tiles[row["row"]] = list(zip(images, (emb * target_emb.unsqueeze(1)).sum(-1).tolist()))
    columns = [row["row"] for row in rows]
    for i, user in enumerate(users):
        user["tiles"] = {c: list(zip(tiles[c][i][0], tiles[c][i][1])) for c in columns}
    return columns, users


def _to_image(pixels):
    array = pixels.clamp(0, 1).permute(1, 2, 0).mul(255).round().byte().numpy()
    return Image.fromarray(array).resize((TILE, TILE), Image.NEAREST)


def write_gallery(out, preset, dataset, rows, shared_config):
    """Write gallery.png, gallery.html and gallery/ tiles; returns the number of image tiles."""
    out = Path(out)
    rows = [row for row in rows if row.get("model_file")]
    columns, users = collect_gallery(rows, int(preset.get("gallery_users", 8)), int(preset.get("gallery_samples", 4)),
                                     int(shared_config.get("seed") or 0))
    tiles_dir = out / "gallery"
    tiles_dir.mkdir(exist_ok=True)
    font = ImageFont.load_default()
    width = max(HISTORY_SHOWN + 1 + sum(len(u["tiles"][c]) for c in columns) for u in users) + len(columns) + 1
    sheet = Image.new("RGB", (width * TILE, len(users) * (TILE + LABEL) + LABEL), "white")
    draw = ImageDraw.Draw(sheet)
    html_rows, count = [], 0
    for r, user in enumerate(users):
        y, x = LABEL + r * (TILE + LABEL), 0
        cells = []
        groups = [("history", [(p, None) for p in user["history"]]), ("true next", [(user["target"], 1.0)])]
        groups += [(c, user["tiles"][c]) for c in columns]
        for name, tiles in groups:
            if r == 0:
                draw.text((x * TILE + 2, 1), name, fill="black", font=font)
            images = []
            for pixels, sim in tiles:
                tile_name = f"u{r}_{count}.png"
                _to_image(pixels).save(tiles_dir / tile_name)
                sheet.paste(_to_image(pixels), (x * TILE, y))
                label = "" if sim is None else f"{sim:.2f}"
                draw.text((x * TILE + 2, y + TILE), label, fill="black", font=font)
                images.append(f'<figure><img src="gallery/{tile_name}"><figcaption>{label}</figcaption></figure>')
                x, count = x + 1, count + 1
            x += 1  # a gap between groups
            cells.append(f"<td>{''.join(images)}</td>")
        html_rows.append(f"<tr><th>{html.escape(user['user'])}</th>{''.join(cells)}</tr>")
    sheet.save(out / "gallery.png")
    references = {row["row"] for row in rows if row.get("reference")}
    head = "".join(f"<th>{html.escape(n)}</th>" for n in
                   ["user", "history", "true next", *(c + (" (reference)" if c in references else "") for c in columns)])
    (out / "gallery.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>gallery</title><style>img{width:64px;image-rendering:pixelated}"
        "figure{display:inline-block;margin:2px;text-align:center}td{vertical-align:top}</style>"
        f"<h1>{html.escape(dataset)}: what each model shows a user</h1>"
        "<p><a href='results.md'>The table</a> (every metric with its interval); the main metrics at a glance:</p>"
        "<p><img src='results.png' style='width:auto;max-width:100%;image-rendering:auto'></p>"
        "<p>Numbers: cosine to the true next item under the evaluation encoder "
        f"({html.escape(str(shared_config.get('eval_encoder') or 'default'))}).</p>"
        f"<table><tr>{head}</tr>{''.join(html_rows)}</table>\n"
    )
    (out / "gallery.json").write_text(json.dumps({"users": [u["user"] for u in users], "columns": columns,
                                                   "tiles": count}, indent=1))
    return count

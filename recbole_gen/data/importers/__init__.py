"""Importers of public datasets into recbole-gen datasets: ``recbole-gen import-dataset NAME ...``.

Each importer reads one raw format (:data:`IMPORTERS`); everything after that is shared: exact
duplicates dropped, an optional seeded user sample and k-core, images found (or, when asked,
downloaded), and the folder written and validated by :mod:`~recbole_gen.data.importers.writer`.
Nothing touches the network unless ``download_images`` is set. See docs/data.md.
"""
import dataclasses
import datetime
import typing
from pathlib import Path

from recbole_gen.data.importers import amazon2023, hm, pixelrec
from recbole_gen.data.importers.common import DatasetImportError, ImportOptions, InputFiles, find_images
from recbole_gen.data.importers.download import download_images, image_file_name
from recbole_gen.data.importers.writer import write_dataset

IMPORTERS = {
    "amazon2023": amazon2023.IMPORTER,
    "hm": hm.IMPORTER,
    "pixelrec": pixelrec.IMPORTER,
    "microlens": pixelrec.IMPORTER,
}
EXAMPLES = 10  # item ids a report names before it gives only the count
METAVARS = {Path: "DIR", int: "N", float: "SECONDS", str: "NAME"}  # by option type, in --help

__all__ = ["IMPORTERS", "DatasetImportError", "ImportOptions", "add_arguments", "import_dataset", "report",
           "run_import"]


def import_dataset(name, options):
    """Import the raw files of dataset ``name`` as ``options`` say; returns the manifest (also written
    to ``<output>/manifest.json``). Raises :class:`DatasetImportError` for anything wrong in the input."""
    if name not in IMPORTERS:
        raise DatasetImportError(f"no importer '{name}'; importers: {', '.join(IMPORTERS)}")
    importer, out = IMPORTERS[name], options.output
    if out.exists() and not options.force:
        raise DatasetImportError(f"{out} already exists (use --force to replace it)")
    if not options.input.is_dir():
        raise DatasetImportError(f"{options.input}: no such input folder")
    if options.download_images and not importer.image_urls:
        raise DatasetImportError(f"{name}'s files name no image URLs to download; put its images in {options.images}")
    if not options.download_images and not options.images.is_dir():
        raise DatasetImportError(f"{options.images}: no such image folder (give --images"
                                 + (", or --download-images)" if importer.image_urls else ")"))

    inputs = InputFiles()
    interactions = importer.read_interactions(options, inputs)
    interactions.drop_duplicates()
    if options.max_users is not None:
        interactions.sample_users(options.max_users, options.seed)
    interactions.k_core(options.k_core)
    items = importer.read_items(options, inputs, set(interactions.item_tokens()))
    downloaded = _download(options, items, interactions.item_tokens()) if options.download_images else None

    found = find_images(options.images) if options.images.is_dir() else {}
    images = {token: found[token] for token in interactions.item_tokens() if token in found}
    if options.require_images:
        missing = set(interactions.item_tokens()) - set(images)
        interactions.drop_items(missing, "item without an image (--require-images)")
        interactions.k_core(options.k_core)
        kept = set(interactions.item_tokens())
        images = {token: path for token, path in images.items() if token in kept}
    if not len(interactions):
        raise DatasetImportError(f"no interaction is left after filtering ({interactions.dropped}); "
                                 f"relax --k-core or --max-users")

    tokens = interactions.item_tokens()
    without_image = [t for t in tokens if t not in images]
    without_metadata = [t for t in tokens if t not in items]
    manifest = {
        "importer": name,
        "dataset": out.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()},
        "inputs": inputs.read,
        "counts": {"users": interactions.count("user"), "items": len(tokens), "interactions": len(interactions),
                   "items_with_image": len(images), "items_without_image": len(without_image)},
        "dropped": interactions.dropped,
        "items_without_image": {"count": len(without_image), "examples": without_image[:EXAMPLES]},
        "items_without_metadata": {"count": len(without_metadata), "examples": without_metadata[:EXAMPLES]},
        "images": {"linked" if options.link else "copied": len(images)},
    }
    if downloaded is not None:
        manifest["download"] = dataclasses.asdict(downloaded)
    write_dataset(out, interactions, items, images, options.images, options.link, manifest)
    return manifest


def _download(options, items, tokens):
    """Fetch the main image of every item left that has a URL into the image folder (resuming)."""
    existing = find_images(options.images) if options.images.is_dir() else {}
    jobs = [(existing.get(t) or options.images / image_file_name(t, items[t].url), items[t].url)
            for t in tokens if t in items and items[t].url]
    return download_images(jobs, workers=options.download_workers, retries=options.download_retries,
                           timeout=options.download_timeout)


def report(manifest, out):
    """The console report of an import: counts, what was dropped and why, items without an image."""
    counts = manifest["counts"]
    lines = [f"imported {manifest['importer']} into {out}: {counts['users']:,} users, {counts['items']:,} items, "
             f"{counts['interactions']:,} interactions (timestamps in seconds)"]
    for reason, lost in manifest["dropped"].items():
        lines.append(f"  dropped {lost['interactions']:,} interaction(s), {lost['users']:,} user(s), "
                     f"{lost['items']:,} item(s): {reason}")
    missing = manifest["items_without_image"]
    if missing["count"]:
        lines.append(f"  {missing['count']:,} item(s) without an image, kept for rankers "
                     f"(e.g. {', '.join(missing['examples'])}); train image models with image_policy placeholder "
                     f"or skip, or import with --require-images")
    if manifest["items_without_metadata"]["count"]:
        lines.append(f"  {manifest['items_without_metadata']['count']:,} item(s) have no metadata row (no title)")
    download = manifest.get("download")
    if download:
        lines.append(f"  download: {download['fetched']:,} fetched, {download['present']:,} already there, "
                     f"{len(download['failed']):,} failed")
        lines += [f"    {file}: {reason}" for file, reason in list(download["failed"].items())[:EXAMPLES]]
    (how, n), = manifest["images"].items()
    lines.append(f"  images: {n:,} {how} into {Path(out) / 'images'}")
    lines.append(f"  manifest: {Path(out) / 'manifest.json'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def add_arguments(parser):
    """Add ``NAME`` and every :class:`ImportOptions` field (as ``--field-name``) to an argparse parser."""
    parser.add_argument("importer", metavar="NAME", choices=sorted(IMPORTERS),
                        help=f"the raw format: {', '.join(sorted(IMPORTERS))}")
    hints = typing.get_type_hints(ImportOptions)
    for field in dataclasses.fields(ImportOptions):
        flag, help_text = "--" + field.name.replace("_", "-"), field.metadata["help"]
        kind = hints[field.name]
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # X | None -> X
        required = field.default is dataclasses.MISSING
        default = None if required else field.default
        parser.add_argument(flag, type=kind, required=required, default=default, metavar=METAVARS[kind],
                            help=help_text + ("" if required or default is None else f" (default: {default})"))


def run_import(args):
    """Run an import from ``add_arguments``' parsed namespace, print the report, return the dataset folder."""
    options = ImportOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(ImportOptions)})
    manifest = import_dataset(args.importer, options)
    print(report(manifest, options.output))
    return options.output

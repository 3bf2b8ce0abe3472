"""Command line: ``run_recbole`` (RecBole's run_recbole.py flags) and ``recbole-gen <command>``.

Every argument that is not one of RecBole's flags must be a ``--key=value`` override; values are converted as
RecBole converts them (:func:`recbole_gen.config.parse_value`). Errors in what the user typed or gave (a model,
dataset, config value, image, checkpoint or user that is wrong) end with one line on stderr naming it and
exit status 2, never a traceback from inside RecBole.
"""
import argparse
import os
import sys
from pathlib import Path

import yaml

import recbole_gen  # noqa: F401  (applies the compatibility patches first)
from recbole_gen.checkpoint import CheckpointError
from recbole_gen.comparison.runner import BenchmarkError
from recbole_gen.config import PATH_KEYS, ConfigError, parse_value
from recbole_gen.data.builtin import BUILDERS, DatasetFormatError, DatasetNotFoundError, build_dataset
from recbole_gen.data.images import ItemImageError
from recbole_gen.data.importers import DatasetImportError, add_arguments as add_import_arguments
from recbole_gen.files import StorageError
from recbole_gen.model.generative import NotARankerError, UnknownUserError
from recbole_gen.utils import UnknownModelError, known_model_names, missing_dependency

USER_ERRORS = (UnknownModelError, DatasetNotFoundError, DatasetFormatError, yaml.YAMLError, ConfigError, ItemImageError, CheckpointError,
               UnknownUserError, NotARankerError, BenchmarkError, DatasetImportError, StorageError)


class UsageError(ValueError):
    """Something the user typed is wrong; the message says what to type instead."""


def parse_overrides(args):
    """``["--epochs=5", ...]`` -> ``{"epochs": 5}``, converted the way RecBole converts command lines."""
    overrides = {}
    for arg in args:
        key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not key or not sep or "=" in value:
            raise UsageError(f"malformed argument '{arg}': overrides are written --key=value (for example --epochs=5)")
        if key in overrides and overrides[key] != value:
            raise UsageError(f"'--{key}' is given twice with different values")
        overrides[key] = value
    return {key: parse_value(value) for key, value in overrides.items()}


def _add_checkpoint_arguments(parser):
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="also load a checkpoint that needs arbitrary unpickling (only for a file you trust)")
    parser.add_argument("--checkpoint-paths", action="store_true",
                        help="read and write data, logs and caches where the checkpoint's config says (data_path, "
                             "log_dir, cache_dir, checkpoint_dir), for a checkpoint you wrote; by default they are "
                             "this command line's (--data_path=... etc.) or the defaults")


def _add_run_arguments(parser):
    parser.add_argument("--model", "-m", default="BPR", help="model name: a RecBole model or a recbole-gen one")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (folder under --data_path)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) for distributed training")
    parser.add_argument("--ip", default="localhost")
    parser.add_argument("--port", default="5678")
    parser.add_argument("--world_size", type=int, default=-1)
    parser.add_argument("--group_offset", type=int, default=0)
    parser.add_argument("--list-models", action="store_true", help="print every model name and exit")


def _config_files(value):
    files = value.strip().split(" ") if value else None
    for file in files or []:
        if not Path(file).is_file():
            raise UsageError(f"config file '{file}' does not exist")
    return files


def _run(args, rest):
    if args.list_models:
        print("\n".join(known_model_names()))
        return 0
    overrides = parse_overrides(rest)
    config_files = _config_files(args.config_files)
    from recbole_gen.quick_start import run

    run(args.model, args.dataset, config_file_list=config_files, config_dict=overrides, nproc=args.nproc,
        world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset)
    return 0


def _make_dataset(args, rest):
    from recbole_gen.config import Config

    if args.name not in BUILDERS:
        raise UsageError(f"no built-in dataset '{args.name}'; built-in datasets: {', '.join(sorted(BUILDERS))}")
    folder = Path(args.data_path) / args.name
    if (folder / f"{args.name}.inter").is_file() and not args.force:
        print(f"{folder} already exists (use --force to rebuild)")
        return 0
    config = Config(model="Pop", dataset=args.name, config_dict={**parse_overrides(rest), "data_path": args.data_path})
    build_dataset(args.name, folder, config)
    print(f"built {args.name} in {folder}")
    return 0


def _benchmark(args, rest):
    from recbole_gen.comparison import run_benchmark

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    out = run_benchmark(args.preset, models=models, dataset=args.dataset, out=args.out, resume=args.resume,
                        overrides=parse_overrides(rest), command=" ".join(["recbole-gen", *sys.argv[1:]]), jobs=args.jobs)
    print(f"results: {out / 'results.md'}\ngallery: {out / 'gallery.html'} and {out / 'gallery.png'}")
    return 0


def _output_folder(path, flag):
    """Refuse an output folder that is a file or that cannot be created or written, before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} '{path}' is a file; give a folder")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{flag} '{path}' cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} '{path}' cannot be written: {existing} is not writable by you; choose another folder")


def _path_overrides(overrides):
    """The ``--data_path``, ``--log_dir``, ``--cache_dir``, ``--checkpoint_dir`` among a command's overrides (taken
    out of them): where a loaded checkpoint's run reads and writes, unless ``--checkpoint-paths``."""
    return {key: overrides.pop(key) for key in PATH_KEYS if key in overrides}


def _load(args, paths):
    from recbole_gen.quick_start import load_data_and_model

    return load_data_and_model(args.model_file, trust=args.trust_checkpoint, config_dict=paths,
                               checkpoint_paths=args.checkpoint_paths)


def _generate(args, rest):
    from recbole_gen.model.generative import GenerativeRecommender

    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    _output_folder(args.out, "--out")
    overrides = parse_overrides(rest)
    _, model, *_ = _load(args, _path_overrides(overrides))
    if not isinstance(model, GenerativeRecommender):
        raise UsageError(f"'{args.model_file}' holds a {type(model).__name__}, which ranks items and draws nothing; "
                         f"give a generative model's checkpoint (e.g. GenLMM), or use `recbole-gen recommend`")
    result = model.generate(users=args.user, num_samples=args.num_samples, seed=args.seed, out_dir=args.out,
                            **overrides)
    print(f"wrote {len(result.manifest)} images and manifest.json to {args.out}")
    return 0


def _recommend(args, rest):
    from recbole_gen.recommend import recommend

    if args.k < 1 or (args.num_samples is not None and args.num_samples < 1):
        raise UsageError(f"--k and --num-samples must be >= 1, got {args.k} and {args.num_samples}")
    if args.out is not None:
        _output_folder(args.out, "--out")
    overrides = parse_overrides(rest)
    paths = _path_overrides(overrides)
    if overrides:
        raise UsageError(f"unknown argument(s) for recommend: {', '.join(f'--{key}' for key in overrides)} (it takes "
                         f"{', '.join(f'--{key}' for key in PATH_KEYS)})")
    config, model, _, _, _, test_data = _load(args, paths)
    print("user\timage\trank\titem\tscore")
    for user in args.user:
        for row in recommend(config, model, test_data, user, args.k, args.num_samples, args.seed, args.out):
            print(f"{row['user']}\t{'' if row['image'] is None else row['image']}\t{row['rank']}\t{row['item']}\t"
                  f"{row['score']:.4f}")
    return 0


def _export(args, rest):
    from recbole_gen.checkpoint import export_checkpoint

    _output_folder(args.out, "--out")
    out = export_checkpoint(args.model_file, args.out, trust=args.trust_checkpoint)
    print(f"exported {args.model_file} to {out}/ (config.json, model.safetensors, other_parameter.*)")
    return 0


def _import_dataset(args, rest):
    from recbole_gen.data.importers import run_import

    if rest:
        raise UsageError(f"unknown argument(s) for import-dataset: {' '.join(rest)}")
    run_import(args)
    return 0


def _guarded(handler, args, rest, prog):
    try:
        return handler(args, rest)
    except (UsageError, *USER_ERRORS) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        if missing_dependency(error) is None:
            raise
        print(f"{prog}: error: {missing_dependency(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted: every file written so far is complete (each is written whole or not at all); "
              f"checkpoints of finished epochs, caches, generated images and benchmark rows are kept", file=sys.stderr)
        return 130


def run_recbole_main(argv=None):
    """``run_recbole --model=SASRec --dataset=ml-100k [--key=value ...]``, as RecBole's script."""
    parser = argparse.ArgumentParser(prog="run_recbole", description=__doc__.splitlines()[0])
    _add_run_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    return _guarded(_run, args, rest, "run_recbole")


def main(argv=None):
    """``recbole-gen <command>``; ``python -m recbole_gen`` is the same."""
    parser = argparse.ArgumentParser(prog="recbole-gen")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="train and evaluate a model (same as run_recbole)")
    _add_run_arguments(run_parser)
    run_parser.set_defaults(handler=_run)
    make = commands.add_parser("make-dataset", help="build a built-in dataset's atomic files and images")
    make.add_argument("name")
    make.add_argument("--data_path", default="dataset", help="parent folder (RecBole's data_path)")
    make.add_argument("--force", action="store_true", help="rebuild even if the folder exists (the old one stays "
                                                           "until the new one is complete)")
    make.set_defaults(handler=_make_dataset)
    importer = commands.add_parser("import-dataset", help="convert a public dataset's files into a RecBole dataset "
                                                          "folder with item images")
    add_import_arguments(importer)
    importer.set_defaults(handler=_import_dataset)
    gen = commands.add_parser("generate", help="draw next-item images with a trained generator's checkpoint")
    gen.add_argument("--model-file", required=True, help="a checkpoint saved by run_recbole (saved/GenLMM-*.pth) "
                                                         "or a folder written by `recbole-gen export`")
    gen.add_argument("--user", action="append", required=True, help="user token (repeat for several users)")
    gen.add_argument("--num-samples", type=int, default=4)
    gen.add_argument("--out", default="generated", help="folder for the PNGs and manifest.json")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed (default: the checkpoint's generation_seed)")
    _add_checkpoint_arguments(gen)
    gen.set_defaults(handler=_generate)
    rec = commands.add_parser("recommend", help="a trained model's top-k items for users (a generator: the nearest "
                                                "catalogue items of its images)")
    rec.add_argument("--model-file", required=True, help="a checkpoint saved by run_recbole, or an exported folder")
    rec.add_argument("--user", action="append", required=True, help="user token (repeat for several users)")
    rec.add_argument("--k", type=int, default=10, help="items per ranking (a generator: per image)")
    rec.add_argument("--num-samples", type=int, default=None, help="a generator's images per user (default: the "
                                                                   "checkpoint's num_samples)")
    rec.add_argument("--seed", type=int, default=None, help="a generator's sampling seed")
    rec.add_argument("--out", default=None, help="a generator: also write its images and manifest.json here")
    _add_checkpoint_arguments(rec)
    rec.set_defaults(handler=_recommend)
    export = commands.add_parser("export", help="write a checkpoint as a folder of config.json + safetensors")
    export.add_argument("--model-file", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--trust-checkpoint", action="store_true",
                        help="also read a checkpoint that needs arbitrary unpickling (e.g. stock RecBole's)")
    export.set_defaults(handler=_export)
    bench = commands.add_parser("benchmark", help="train baselines and generators on one split; write a table and a gallery")
    bench.add_argument("--preset", default="default", help="properties/benchmark/<name>.yaml or a yaml file")
    bench.add_argument("--dataset", default=None, help="dataset (default: the preset's)")
    bench.add_argument("--models", default=None, help="comma-separated rows, e.g. Pop,SASRec,GenLMM-SFT (default: the preset's)")
    bench.add_argument("--out", default=None, help="results folder (default: results/<dataset>-<time>)")
    bench.add_argument("--resume", action="store_true", help="keep finished rows of --out (or of the latest run)")
    bench.add_argument("--jobs", type=int, default=None,
                       help="rows run at a time, sharing the cores (default: the preset's jobs)")
    bench.set_defaults(handler=_benchmark)
    args, rest = parser.parse_known_args(argv)
    return _guarded(args.handler, args, rest, f"recbole-gen {args.command}")

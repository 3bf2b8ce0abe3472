"""Run every row of a benchmark preset with the same dataset, split, seed and evaluation.

Each row runs in its own spawned process (so its peak memory is its own and a crash cannot take
the table with it) through :func:`recbole_gen.quick_start.run_recbole`, which also bootstraps the
row's test users there (:mod:`recbole_gen.comparison.bootstrap`), and is written to
``rows/<row>.json`` (and its resampled metrics to ``rows/<row>.npz``) when it finishes;
``resume=True`` keeps rows already written with the same settings (model, dataset, resolved config,
resamples), so an interrupted benchmark loses at most the row in flight and a changed row reruns. A row's config may name another row's checkpoint as ``'@Row'`` (GenLMM-RL starts from
GenLMM-SFT, rewarded by the SASRec row; a drawn twin redraws the SASRec row's top items); ``block`` names the
part of the table a row belongs to (rankers, generators, drawn twins), and ``reference: true`` marks a row that is
not a competitor (a bound such as a redraw of the true next item): the report shows it apart. A row's bootstrap
also resamples the preset's ``slices`` of test users (cold, tail and head targets).
"""
import contextlib
import json
import multiprocessing
import os
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

import recbole_gen
from recbole_gen.files import atomic_write, atomic_write_bytes, digest
from recbole_gen.utils import UnknownModelError, get_model, properties_dir

REFERENCE = re.compile(r"^@(.+)$")


class BenchmarkError(ValueError):
    """A preset, row or dataset problem found before any training starts."""


@dataclass
class Row:
    name: str
    model: str
    config: dict
    needs: list
    reference: bool
    block: str


def load_preset(preset, _extending=()):
    """A preset by name (``properties/benchmark/<name>.yaml``) or by path. ``extends: <preset>`` starts from that
    preset: this file's top-level keys replace the base's, except ``config`` and ``rows``, which are updated key by
    key (a row named here replaces the base's row; a ``config`` key this file sets to ``~`` is removed, so the
    model's default applies)."""
    path = Path(preset)
    if not path.is_file():
        path = properties_dir() / "benchmark" / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (properties_dir() / "benchmark").glob("*.yaml"))
        raise BenchmarkError(f"no benchmark preset '{preset}': give a yaml file or one of {', '.join(names)}")
    with open(path, encoding="utf-8") as f:
        own = yaml.safe_load(f)
    base = own.pop("extends", None)
    if base is None:
        return {"name": path.stem, **own}
    if path.resolve() in _extending:
        raise BenchmarkError(f"preset {path} extends itself through {base}")
    parent, own_config = load_preset(base, (*_extending, path.resolve())), own.get("config", {})
    config = {key: value for key, value in {**parent.get("config", {}), **own_config}.items()
              if not (key in own_config and value is None)}
    return {**parent, **own, "name": path.stem, "config": config, "rows": {**parent.get("rows", {}), **own.get("rows", {})}}


def plan_rows(preset, models=None):
    """The rows to run, in an order where every '@Row' reference runs first; checked up front."""
    names = list(models or preset["models"])
    unknown = [name for name in names if name not in preset["rows"]]
    if unknown:
        raise BenchmarkError(f"unknown benchmark row(s) {', '.join(unknown)}; this preset has: {', '.join(preset['rows'])}")
    rows = {}
    for name in names:
        config = dict(preset["rows"][name] or {})
        model = config.pop("model", name)
        reference = bool(config.pop("reference", False))
        block = str(config.pop("block", "references" if reference else "rankers"))
        try:
            get_model(model)
        except UnknownModelError as error:
            raise BenchmarkError(f"row '{name}': {error}") from None
        needs = [m.group(1) for v in config.values() if isinstance(v, str) and (m := REFERENCE.match(v))]
        missing = [n for n in needs if n not in names]
        if missing:
            raise BenchmarkError(f"row '{name}' needs row(s) {', '.join(missing)}: add them to --models")
        rows[name] = Row(name, model, config, needs, reference, block)
    ordered, done = [], set()
    while len(ordered) < len(rows):
        ready = [row for row in rows.values() if row.name not in done and set(row.needs) <= done]
        if not ready:
            raise BenchmarkError(f"rows refer to each other in a cycle: {', '.join(sorted(set(rows) - done))}")
        ordered.append(ready[0])
        done.add(ready[0].name)
    return ordered


def _exit_with_parent(parent_pid):
    """A row process must not outlive the benchmark that started it (a killed benchmark would
    otherwise leave it training, writing to the same logs)."""
    import threading

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _row_worker(model, dataset, config_dict, bootstrap, queue, parent_pid):
    from recbole_gen.comparison.bootstrap import replicates, slices
    from recbole_gen.quick_start import run_recbole

    _exit_with_parent(parent_pid)
    try:
        result = run_recbole(model, dataset, config_dict=config_dict)
        per_user = result.pop("test_per_user")
        draws = replicates(per_user, bootstrap["samples"], config_dict["seed"])
        parts = slices(per_user, bootstrap["slices"], bootstrap["slice_metrics"], bootstrap["samples"], config_dict["seed"])
        for name, part in parts.items():
            draws["metrics"].update({f"{metric}|{name}": values for metric, values in part.pop("draws").items()})
        result["slices"] = parts
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put(("ok", (_plain(result), draws)))
    except BaseException as error:  # reported to the parent, which stops the benchmark
        import traceback

        queue.put(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))


def _plain(value):
    """numpy scalars and OrderedDicts -> JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


@contextlib.contextmanager
def row_environment(threads=None):
    """While open, spawned processes get ``OMP_WAIT_POLICY=ACTIVE`` (OpenMP's own default) unless the user's
    environment named a policy, and ``threads`` threads in every OpenMP runtime they load (torch's, faiss's). A row
    has its cores to itself (alone, or beside rows on the other cores: ``jobs``), where the package's passive default
    (for runs that share the CPU, recbole_gen/__init__.py) costs a ranker ~20% per epoch and the bootstrap's
    eigensolver 3x (measured in docs/reliability.md)."""
    names = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    previous = {name: os.environ.get(name) for name in names}
    os.environ["OMP_WAIT_POLICY"] = recbole_gen.OMP_WAIT_POLICY_FROM_ENVIRONMENT or "ACTIVE"
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Spawned:
    """``target(*args, queue, parent_pid)`` in a spawned process (:func:`row_environment`); :meth:`poll` returns the
    message it put on ``queue`` once there is one, ``(None, exit code)`` if it died without one, else None."""

    def __init__(self, target, *args, threads=None):
        context = multiprocessing.get_context("spawn")
        self.queue = context.SimpleQueue()
        self.process = context.Process(target=target, args=(*args, self.queue, os.getpid()))
        with row_environment(threads):
            self.process.start()

    def poll(self):
        # read the message while the process still runs: one larger than the pipe's buffer (a row's bootstrap
        # draws) blocks the process until it is read, so waiting for its exit first would wait forever
        alive = self.process.is_alive()
        if not self.queue.empty():
            message = self.queue.get()
            self.process.join()
            return message
        if alive:
            return None
        self.process.join()
        return None, self.process.exitcode

    def stop(self):
        if self.process.is_alive():  # interrupted, or another row failed: stop it too
            self.process.terminate()
            self.process.join()


#: how often a waiting benchmark looks at its running rows
POLL_SECONDS = 0.2


def run_in_process(target, *args):
    """:class:`Spawned` ``target(*args, queue, parent_pid)``, waited for: its message."""
    spawned = Spawned(target, *args)
    try:
        while (message := spawned.poll()) is None:
            spawned.process.join(timeout=POLL_SECONDS)
    finally:
        spawned.stop()
    return message


def run_rows(rows, start, finish, jobs=1, threads=None):
    """Run ``rows`` in spawned processes, up to ``jobs`` at a time with ``threads`` each; the next to start is the first
    of ``rows`` still waiting whose needs have finished. ``start(row)`` gives ``(target, *args)``, or None when the
    row has nothing to run (resumed); ``finish(row, payload)`` takes a row's result. The first failure stops the rows
    still running and raises."""
    waiting, running, done = list(rows), {}, set()
    progress = tqdm(total=len(rows), desc="benchmark rows", unit="row")
    try:
        while waiting or running:
            ready = [row for row in waiting if set(row.needs) <= done]
            if not ready and not running:
                raise BenchmarkError(f"rows {', '.join(row.name for row in waiting)} need rows that are not run")
            if ready and len(running) < jobs:
                row = ready[0]
                waiting.remove(row)
                call = start(row)
                if call is None:
                    done.add(row.name)
                    progress.update()
                else:
                    running[row.name] = (row, Spawned(*call, threads=threads))
                    progress.set_postfix_str(", ".join(running))
                continue
            for name, (row, spawned) in list(running.items()):
                message = spawned.poll()
                if message is None:
                    continue
                del running[name]
                status, payload = message
                if status is None:
                    raise RuntimeError(f"row '{name}' died without a result (exit code {payload})")
                if status != "ok":
                    raise RuntimeError(f"row '{name}' failed: {payload}")
                finish(row, payload)
                done.add(name)
                progress.update()
                progress.set_postfix_str(", ".join(running))
            time.sleep(POLL_SECONDS)
    finally:
        for _, spawned in running.values():
            spawned.stop()
        progress.close()


def _write_json(path, data):
    atomic_write_bytes(path, json.dumps(data, indent=2, default=str).encode())


def _write_draws(path, draws):
    atomic_write(path, lambda f: np.savez_compressed(f, **{k: v.astype(np.float32) for k, v in draws.items()}))


def _read_draws(path):
    with np.load(path) as arrays:
        return {key: arrays[key].astype(np.float64) for key in arrays.files}


def default_out_dir(dataset, resume):
    root = Path("results")
    if resume:
        previous = sorted(root.glob(f"{dataset}-*"))
        if previous:
            return previous[-1]
    return root / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_benchmark(preset="default", models=None, dataset=None, out=None, resume=False, overrides=None, command=None,
                  jobs=None):
    """Run (or resume) a benchmark; returns the results folder with results.md/.csv/.json/.png and the gallery."""
    from recbole_gen.comparison.gallery import write_gallery
    from recbole_gen.comparison.plot import write_plot
    from recbole_gen.comparison.report import write_report
    from recbole_gen.config import Config
    from recbole_gen.data import ensure_dataset_files

    preset = load_preset(preset)
    dataset = dataset or preset["dataset"]
    rows = plan_rows(preset, models)
    jobs = int(jobs or preset["jobs"])
    if jobs < 1:
        raise BenchmarkError(f"jobs must be >= 1, got {jobs}")
    shared = {**(preset.get("config") or {}), **(overrides or {})}
    ensure_dataset_files(Config(model=rows[0].model, dataset=dataset, config_dict=shared))  # fail before training

    out = Path(out) if out else default_out_dir(dataset, resume)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    shared = {**shared, "log_dir": str(out / "logs")}
    samples = int(preset["bootstrap_samples"])
    bootstrap = {"samples": samples, "slices": preset.get("slices") or {}, "slice_metrics": preset.get("slice_metrics") or []}
    results, draws, started = {}, {}, {}

    def start(row):
        config_dict = {**shared, **{k: _resolve(v, results) for k, v in row.config.items()},
                       "checkpoint_dir": str(out / "saved" / row.name)}  # rows of one model may start in one second
        key = digest({"model": row.model, "dataset": dataset, "config": config_dict, "bootstrap": bootstrap})
        started[row.name] = config_dict, key
        row_file, draws_file = _row_files(out, row)
        if resume and row_file.is_file() and draws_file.is_file():
            previous = json.loads(row_file.read_text())
            if previous.get("key") == key:
                results[row.name], draws[row.name] = previous, _read_draws(draws_file)
                return None
        return _row_worker, row.model, dataset, config_dict, bootstrap

    def finish(row, payload):
        (result, row_draws), (config_dict, key) = payload, started[row.name]
        results[row.name] = {"row": row.name, "model": row.model, "config": row.config, "reference": row.reference,
                             "block": row.block, "key": key, **result,
                             "bootstrap": {"samples": samples, "seed": config_dict["seed"], "users": row_draws["users"]}}
        draws[row.name] = row_draws["metrics"]
        row_file, draws_file = _row_files(out, row)
        _write_draws(draws_file, draws[row.name])
        _write_json(row_file, results[row.name])

    first = [row for name in preset.get("run_first") or [] for row in rows if row.name == name]
    threads = max(1, torch.get_num_threads() // jobs)  # each row's share of the cores
    run_rows(first + [row for row in rows if row not in first], start, finish, jobs, threads)
    ordered = [results[row.name] for row in rows]
    table = write_report(out, preset, dataset, ordered, draws, shared, command)
    write_plot(out, preset, dataset, table)
    write_gallery(out, preset, dataset, ordered, shared)
    return out


def _row_files(out, row):
    """A finished row's result and bootstrap draws (``resume`` keeps a row whose result has its key)."""
    return out / "rows" / f"{row.name}.json", out / "rows" / f"{row.name}.npz"


def _resolve(value, results):
    match = REFERENCE.match(value) if isinstance(value, str) else None
    return results[match.group(1)]["model_file"] if match else value

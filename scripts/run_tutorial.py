"""Execute docs/tutorial.ipynb top to bottom, as CI does (`make test`, after pytest), and print its wall time.

    python scripts/run_tutorial.py                 # run in a fresh temporary folder (cold: builds everything), check
    python scripts/run_tutorial.py --render        # also write the executed notebook and docs/tutorial.md (+ images)
    python scripts/run_tutorial.py --workdir DIR   # run in DIR (kept; a second run reuses its caches)

Fails (exit status 1) on any cell error, or when the notebook takes longer than --budget seconds (default 900: the
tutorial promises a 2-core CPU run within 15 minutes). The kernel is ipykernel's `python3` of the Python that runs
this script, so a fresh virtual environment with the `dev` extra can execute it.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def execute(notebook, workdir, budget):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=budget, resources={"metadata": {"path": str(workdir)}})
    started = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        elapsed = time.perf_counter() - started
        print(f"tutorial: {notebook.name} FAILED after {elapsed / 60:.1f} min:\n{error}", file=sys.stderr)
        return nb, elapsed, False
    return nb, time.perf_counter() - started, True


def render(nb, notebook):
    """Write the executed notebook back and convert it to Markdown beside it (images in <stem>_files/)."""
    import nbformat
    from nbconvert import MarkdownExporter

    nbformat.write(nb, notebook)
    files = f"{notebook.stem}_files"
    body, resources = MarkdownExporter().from_notebook_node(
        nb, resources={"output_files_dir": files, "unique_key": notebook.stem})
    out_dir = notebook.parent / files
    shutil.rmtree(out_dir, ignore_errors=True)
    for name, data in resources.get("outputs", {}).items():
        path = notebook.parent / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    notebook.with_suffix(".md").write_text(body)
    print(f"tutorial: wrote {notebook}, {notebook.with_suffix('.md')} and {len(resources.get('outputs', {}))} "
          f"image(s) in {out_dir}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder the notebook runs in (default: a fresh temporary folder, removed afterwards)")
    parser.add_argument("--budget", type=float, default=float(os.environ.get("TUTORIAL_BUDGET_S", 900)),
                        help="seconds the whole notebook may take (env TUTORIAL_BUDGET_S; default 900)")
    parser.add_argument("--render", action="store_true", help="write the executed notebook and its Markdown")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="recbole-gen-tutorial-")) if temporary else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        load = os.getloadavg()[0]
        nb, elapsed, ok = execute(args.notebook.resolve(), workdir, args.budget)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    cells = sum(cell.cell_type == "code" for cell in nb.cells)
    print(f"tutorial: {args.notebook.name} ran in {int(elapsed // 60)} min {elapsed % 60:.0f} s "
          f"({cells} code cells, {'no errors' if ok else 'FAILED'}; budget {args.budget / 60:.0f} min; "
          f"load average at start {load:.2f}, {os.cpu_count()} CPUs)")
    if not ok:
        return 1
    if elapsed > args.budget:
        print(f"tutorial: over its budget of {args.budget:.0f} s", file=sys.stderr)
        return 1
    if args.render:
        render(nb, args.notebook.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The tutorial notebook is well-formed, offline, rendered, and run by `make test` (scripts/run_tutorial.py) after the
test suite; the runner fails on a cell error. Executing the tutorial itself is the runner's job, not this file's."""
import ast
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
sys.path.insert(0, str(ROOT / "scripts"))


def _notebook():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def test_notebook_parses_and_every_code_cell_compiles():
    nb = _notebook()
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    for source in code:
        ast.parse(source)  # plain Python: no shell escapes or magics that only a notebook understands
    first = code[0]
    assert 'os.environ["HF_HUB_OFFLINE"] = "1"' in first and "torch.set_num_threads(2)" in first
    text = "\n".join(code)
    for api in ("run_recbole(", "load_data_and_model(", "model.generate(", "recbole-gen make-dataset",
                "run_recbole --model=", "recbole-gen generate"):
        assert api in text, api


def test_exercises_say_what_to_change():
    nb = _notebook()
    exercises = next(cell.source for cell in nb.cells if cell.cell_type == "markdown" and "## Exercises" in cell.source)
    items = re.findall(r"^\d+\. \*\*", exercises, flags=re.M)
    assert 3 <= len(items) <= 5
    assert all(key in exercises for key in ("history_len", "rl_", "eval_encoder"))


def test_rendered_markdown_and_its_images_are_in_docs():
    md = (ROOT / "docs" / "tutorial.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert len(images) >= 4
    for image in images:
        assert (ROOT / "docs" / image).is_file(), image
    assert "## Exercises" in md


def test_make_test_runs_the_notebook_after_pytest():
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M).group(1).splitlines()
    pytest_line = next(i for i, line in enumerate(recipe) if "pytest" in line)
    notebook_line = next(i for i, line in enumerate(recipe) if "scripts/run_tutorial.py" in line)
    assert notebook_line > pytest_line
    dev = re.search(r"^dev = \[(.*)\]", (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    for package in ("nbclient", "nbformat", "ipykernel"):
        assert f'"{package}"' in dev


@pytest.mark.parametrize("source, status", [("x = 1 + 1", 0), ("1 / 0", 1)])
def test_runner_fails_on_a_cell_error(tmp_path, capsys, source, status):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import run_tutorial

    notebook = tmp_path / "tiny.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os"), nbformat.v4.new_code_cell(source)],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nbformat.write(nb, notebook)
    assert run_tutorial.main(["--notebook", str(notebook), "--budget", "120"]) == status
    out = capsys.readouterr()
    assert "tiny.ipynb ran in" in out.out
    if status:
        assert "ZeroDivisionError" in out.err

"""What a user installs: the sdist and the wheel build without a warning, and the wheel alone, in a fresh virtual
environment and away from the checkout, imports, finds its properties/ and runs ``run_recbole``."""
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROPERTIES = sorted(str(path.relative_to(REPO)) for path in (REPO / "properties").rglob("*.yaml"))


def run(args, **kwargs):
    return subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """``python -m build`` of the checkout (the sdist, then the wheel from it), with the setuptools installed here
    (no download): its folder and everything it printed."""
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # only makes distutils say that it skips byte-compiling
    build = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO], env=env)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return out, build.stdout + build.stderr


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
    """A fresh virtual environment holding the wheel; its third-party packages are this environment's, appended to
    its path by a .pth file (the .pth files of that folder, such as an editable install's finder, do not run)."""
    venv = tmp_path_factory.mktemp("venv")
    assert run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    python = venv / "bin" / "python"
    (wheel,) = dist[0].glob("recbole_gen-*.whl")
    install = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
                  **outside_checkout(venv))
    assert install.returncode == 0 and "Successfully installed recbole-gen" in install.stdout, install.stdout[-2000:]
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    shared = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site) / "recbole-gen-test-dependencies.pth").write_text("\n".join(shared) + "\n")
    return venv


def outside_checkout(folder, venv=None):
    """Subprocess settings that hide the checkout (no PYTHONPATH, a working folder outside it), as if ``venv`` were
    activated."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    if venv is not None:
        env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    return {"cwd": folder, "env": env}


def test_build_prints_no_warning_and_ships_license_and_properties(dist):
    out, log = dist
    assert "warning" not in log.lower(), [line for line in log.splitlines() if "warning" in line.lower()]
    (wheel,) = out.glob("recbole_gen-*.whl")
    (sdist,) = out.glob("recbole_gen-*.tar.gz")
    wheel_files = zipfile.ZipFile(wheel).namelist()
    assert sorted(name.replace("recbole_gen/", "", 1) for name in wheel_files if name.endswith(".yaml")) == PROPERTIES
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel_files)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in wheel_files if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    sdist_files = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert {"LICENSE", "pyproject.toml", *PROPERTIES} <= sdist_files


def test_wheel_imports_from_its_environment_with_its_requirements_met(venv, tmp_path):
    code = ("import recbole_gen, recbole_gen.utils as u; from recbole_gen.config import Config;"
            "print(recbole_gen.__file__); print(u.properties_dir());"
            "print(Config(model='SASRec', dataset='ml-100k')['log_dir'])")
    out = run([venv / "bin" / "python", "-c", code], **outside_checkout(tmp_path, venv))
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, properties, log_dir = out.stdout.split()
    assert Path(module_file).is_relative_to(venv), "imported the checkout, not the wheel"
    assert Path(properties).is_relative_to(venv) and (Path(properties) / "overall.yaml").is_file()
    assert log_dir == "log"
    check = run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "check"], **outside_checkout(tmp_path))
    assert check.returncode == 0, check.stdout[-2000:]  # the wheel's requirements hold for the tested versions


def test_wheel_runs_run_recbole(venv, tmp_path):
    command = [venv / "bin" / "run_recbole", "--model=Pop", "--dataset=ml-100k", "--epochs=1"]
    out = run(command, **outside_checkout(tmp_path, venv))
    assert out.returncode == 0, out.stderr[-3000:]
    hit = re.search(r"test result.*'hit@10', (?:np\.float64\()?([0-9.]+)", out.stdout + out.stderr)
    assert hit and 0.3 < float(hit[1]) < 0.7, out.stderr[-2000:]  # popularity on MovieLens-100k: about half the users
    assert [path.name.split("-")[0] for path in (tmp_path / "saved").iterdir()] == ["Pop"]

"""A wheel built from the repository carries properties/ and finds it when installed elsewhere."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_properties(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("recbole_gen-*.whl")
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import recbole_gen, recbole_gen.utils as u; from recbole_gen.config import Config;"
        "print(recbole_gen.__file__); print(u.properties_dir());"
        "print(Config(model='SASRec', dataset='ml-100k')['log_dir'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, properties, log_dir = out.stdout.split()
    assert module_file.startswith(str(site)), "imported the repository, not the wheel"
    assert Path(properties) == site / "recbole_gen" / "properties"
    assert (Path(properties) / "overall.yaml").is_file() and log_dir == "log"

"""Each compat patch: the RecBole code path it fixes works with the patch and fails without it.

"Without" runs in a fresh interpreter that applies every patch but one, so the test proves the
patch is what makes the path work on this numpy/pandas/torch/scipy."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tiny_data import write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

SCENARIOS = {
    "numpy_aliases": """
        from recbole_gen.config import Config
        Config(model="BPR", dataset="ml-100k")
    """,
    "pandas_cow": """
        from recbole_gen.config import Config
        from recbole_gen.data import create_dataset
        from tiny_data import write_tiny_dataset
        path = write_tiny_dataset(WORKDIR)
        config = Config(model="BPR", dataset="tiny", config_dict={"data_path": str(path), "load_col": None})
        dataset = create_dataset(config)
        assert dataset.item_feat["price"].isnull().sum() == 0, "float NaN not filled"
    """,
    "scipy_dok": """
        from recbole.data import data_preparation
        from recbole_gen.config import Config
        from recbole_gen.data import create_dataset
        from recbole_gen.utils import get_model
        from tiny_data import write_tiny_dataset
        path = write_tiny_dataset(WORKDIR)
        config = Config(model="LightGCN", dataset="tiny", config_dict={"data_path": str(path)})
        train, _, _ = data_preparation(config, create_dataset(config))
        get_model("LightGCN")(config, train.dataset)
    """,
    "torch_load": """
        from recbole.data import data_preparation
        from recbole_gen.config import Config
        from recbole_gen.data import create_dataset
        from recbole_gen.utils import get_model, get_trainer
        from tiny_data import write_tiny_dataset
        path = write_tiny_dataset(WORKDIR)
        config = Config(model="BPR", dataset="tiny", config_dict={"data_path": str(path), "checkpoint_dir": str(WORKDIR)})
        train, _, _ = data_preparation(config, create_dataset(config))
        trainer = get_trainer(config["MODEL_TYPE"], "BPR")(config, get_model("BPR")(config, train.dataset))
        trainer._save_checkpoint(0)
        trainer.resume_checkpoint(trainer.saved_model_file)
    """,
}

PREAMBLE = """
import sys, types, pathlib
sys.path.insert(0, {tests!r})
WORKDIR = pathlib.Path({workdir!r})
# import recbole_gen.compat without running recbole_gen/__init__.py (which applies every patch)
package = types.ModuleType("recbole_gen"); package.__path__ = [{package!r}]
sys.modules["recbole_gen"] = package
import recbole_gen.compat as compat
for name in {patches!r}:
    getattr(compat, "patch_" + {{"numpy_aliases": "numpy_aliases", "pandas_cow": "pandas_copy_on_write",
        "scipy_dok": "scipy_dok_update", "torch_load": "torch_load"}}[name])()
compat._applied = True
"""


def run_scenario(scenario, patches, workdir):
    workdir.mkdir(parents=True, exist_ok=True)
    script = PREAMBLE.format(tests=str(TESTS), workdir=str(workdir), package=str(REPO / "recbole_gen"),
                             patches=list(patches))
    script += textwrap.dedent(SCENARIOS[scenario])
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=workdir, timeout=300)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_patch_is_needed_and_sufficient(scenario, tmp_path):
    others = [name for name in SCENARIOS if name != scenario]
    with_patch = run_scenario(scenario, [*others, scenario], tmp_path / "with")
    assert with_patch.returncode == 0, with_patch.stderr[-3000:]
    without = run_scenario(scenario, others, tmp_path / "without")
    assert without.returncode != 0, f"{scenario} works without its patch: the patch is dead code"


def test_numpy_aliases_restored():
    assert np.float_ is np.float64 and np.unicode_ is np.str_ and np.bool8 is np.bool_


def test_pandas_seq_fields_and_nan_filling(tmp_path):
    from recbole_gen.config import Config
    from recbole_gen.data import create_dataset

    path = write_tiny_dataset(tmp_path)
    config = Config(model="BPR", dataset="tiny", config_dict={"data_path": str(path), "load_col": None})
    dataset = create_dataset(config)
    items, iid = dataset.item_feat, dataset.token2id("item_id", ["i1", "i5", "i6", "i7"])
    # i5 has an empty tags cell, i7 an empty vec cell, i6 a missing price
    assert [len(items["tags"][i]) for i in iid] == [2, 0, 2, 2]
    assert [len(items["vec"][i]) for i in iid] == [2, 2, 2, 0]
    assert items["price"].isnull().sum() == 0


def test_recbole_checkpoint_round_trip_through_trainer(tmp_path):
    from recbole.data import data_preparation

    from recbole_gen.config import Config
    from recbole_gen.data import create_dataset
    from recbole_gen.utils import get_model, get_trainer

    path = write_tiny_dataset(tmp_path)
    config = Config(model="BPR", dataset="tiny", config_dict={"data_path": str(path), "checkpoint_dir": str(tmp_path)})
    train, _, _ = data_preparation(config, create_dataset(config))
    trainer = get_trainer(config["MODEL_TYPE"], "BPR")(config, get_model("BPR")(config, train.dataset))
    trainer._save_checkpoint(3)
    trainer.resume_checkpoint(trainer.saved_model_file)
    assert trainer.start_epoch == 4


def test_quick_start_imports_without_ray_or_transformers():
    code = ("import sys, recbole_gen.quick_start, recbole_gen.cli\n"
            "for heavy in ('ray', 'transformers'): assert heavy not in sys.modules, heavy + ' imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

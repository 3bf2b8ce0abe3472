"""Each compat patch: the RecBole code path it fixes works with the patch and fails without it.

"Without" applies every patch but one, so the test proves the patch is what makes the path work on
this numpy/pandas/torch/scipy: a fresh interpreter leaves that patch out or, for a patch that
replaces several RecBole methods (pandas_cow), puts back the original of the one method a scenario
is about, for that scenario only."""
import json
import subprocess
import sys
import textwrap
import tomllib
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from tiny_data import write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

Scenario = namedtuple("Scenario", "patch replaces fails_with code")

SCENARIOS = {
    # replaces: the RecBole method the patch replaces (``Class.method``), for patches with several
    # paths; fails_with: what the run without the patch (or without that method's patch) fails with
    "numpy_aliases": Scenario("numpy_aliases", None, "np.float_", """
        from recbole_gen.config import Config
        Config(model="BPR", dataset="ml-100k")
    """),
    "pandas_cow/load_feat": Scenario("pandas_cow", "Dataset._load_feat", "has no attribute 'split'", """
        from recbole.config import Config
        from recbole.data.dataset import Dataset
        from tiny_data import write_tiny_dataset
        path = write_tiny_dataset(WORKDIR)
        dataset = Dataset(Config(model="BPR", dataset="tiny", config_dict={"data_path": str(path), "load_col": None}))
        items = dataset.item_feat.set_index(dataset.id2token("item_id", dataset.item_feat["item_id"]))
        # every 5th item has an empty tags cell, every 7th an empty vec cell
        ids = [f"i{i}" for i in range(1, 31)]
        assert [len(items.loc[i, "tags"]) for i in ids] == [0 if i % 5 == 0 else 2 for i in range(1, 31)]
        assert [len(items.loc[i, "vec"]) for i in ids] == [0 if i % 7 == 0 else 2 for i in range(1, 31)]
    """),
    "pandas_cow/fill_nan": Scenario("pandas_cow", "Dataset._fill_nan", "NaN left", """
        from recbole.config import Config
        from recbole.data.dataset import Dataset
        path = write_items(WORKDIR, "fill", "brand:token\\tprice:float",
                           {"i1": "b1\\t1.0", "i2": "b2\\t2.0", "i3": "b1\\t", "i4": "b2\\t6.0"})
        dataset = Dataset(Config(model="BPR", dataset="fill", config_dict={"data_path": path, "load_col": None}))
        items = dataset.item_feat.set_index(dataset.id2token("item_id", dataset.item_feat["item_id"]))
        assert not items.isnull().any().any(), f"NaN left in item_feat:\\n{items}"
        assert items.loc["i3", "price"] == 3.0 and items.loc["[PAD]", "brand"] == 0  # the mean; [PAD]
    """),
    "pandas_cow/remap": Scenario("pandas_cow", "Dataset._remap", "Length of values", """
        from recbole.config import Config
        from recbole.data.dataset import Dataset
        tags = {"i1": "t1 t2", "i2": "t2", "i3": "t3 t1 t2", "i4": "t4"}
        path = write_items(WORKDIR, "remap", "tags:token_seq", tags)
        dataset = Dataset(Config(model="BPR", dataset="remap", config_dict={"data_path": path, "load_col": None}))
        for iid, ids in zip(dataset.item_feat["item_id"][1:], dataset.item_feat["tags"][1:]):
            assert " ".join(dataset.id2token("tags", ids)) == tags[dataset.id2token("item_id", iid)]
    """),
    "pandas_cow/normalize": Scenario("pandas_cow", "Dataset._normalize", "Length of values", """
        import numpy as np
        from recbole.config import Config
        from recbole.data.dataset import Dataset
        vecs = {"i1": [1.0, 3.0], "i2": [5.0], "i3": [2.0, 9.0, 4.0], "i4": [7.0]}
        path = write_items(WORKDIR, "norm", "vec:float_seq", {i: " ".join(map(str, v)) for i, v in vecs.items()})
        config = {"data_path": path, "load_col": None, "normalize_field": ["vec"]}
        dataset = Dataset(Config(model="BPR", dataset="norm", config_dict=config))
        for iid, vec in zip(dataset.item_feat["item_id"][1:], dataset.item_feat["vec"][1:]):
            assert np.allclose(vec, (np.array(vecs[dataset.id2token("item_id", iid)]) - 1.0) / 8.0), vec
    """),
    "pandas_cow/discretization": Scenario("pandas_cow", "Dataset._discretization", "Length of values", """
        # a numerical float_seq field, discretized (line 792)
        import numpy as np
        from recbole.config import Config
        from recbole.data.dataset import Dataset
        vecs = {"i1": [1.0, 3.0], "i2": [5.0], "i3": [2.0, 9.0, 4.0], "i4": [7.0]}
        path = write_items(WORKDIR, "disc", "vec:float_seq", {i: " ".join(map(str, v)) for i, v in vecs.items()})
        config = {"data_path": path, "load_col": None, "numerical_features": ["vec"],
                  "discretization": {"vec": {"method": "ED", "bucket": 4}}}
        dataset = Dataset(Config(model="BPR", dataset="disc", config_dict=config))
        for iid, (ones, buckets) in zip(dataset.item_feat["item_id"][1:], dataset.item_feat["vec"][1:]):
            vec = np.array(vecs[dataset.id2token("item_id", iid)])
            assert list(ones) == [1] * len(vec)
            assert list(buckets) == list(np.floor((vec - 1.0) * 4 / (8.0 + 1e-9) + 1))  # buckets 1..4
    """),
    "pandas_cow/numerical": Scenario("pandas_cow", "Dataset._discretization", "Length of values", """
        # a numerical float_seq field, not discretized (line 809)
        from recbole.config import Config
        from recbole.data.dataset import Dataset
        vecs = {"i1": [1.0, 3.0], "i2": [5.0], "i3": [2.0, 9.0, 4.0], "i4": [7.0]}
        path = write_items(WORKDIR, "num", "vec:float_seq", {i: " ".join(map(str, v)) for i, v in vecs.items()})
        config = {"data_path": path, "load_col": None, "numerical_features": ["vec"]}
        dataset = Dataset(Config(model="BPR", dataset="num", config_dict=config))
        for iid, (values, ones) in zip(dataset.item_feat["item_id"][1:], dataset.item_feat["vec"][1:]):
            assert list(values) == vecs[dataset.id2token("item_id", iid)] and list(ones) == [1] * len(values)
    """),
    "pandas_cow/benchmark_presets": Scenario("pandas_cow", "SequentialDataset._benchmark_presets", "item_length", """
        # pre-split train/valid/test files (benchmark_filename)
        from recbole.config import Config
        from recbole.data.dataset import SequentialDataset
        splits = {
            "train": [("u1", "i1 i2", "i3"), ("u1", "i1 i2 i3", "i4"), ("u2", "i2", "i5"),
                      ("u3", "i1 i4 i5 i2", "i3")],
            "valid": [("u1", "i1 i2 i3 i4", "i5"), ("u2", "i2 i5", "i1")],
            "test": [("u1", "i1 i2 i3 i4 i5", "i2"), ("u2", "i2 i5 i1", "i4"), ("u3", "i1 i4 i5 i2 i3", "i1")],
        }
        path = write_atomic(WORKDIR, "presplit", {
            f"{split}.inter": ["user_id:token\\titem_id_list:token_seq\\titem_id:token"]
                              + ["\\t".join(row) for row in rows]
            for split, rows in splits.items()
        })
        config = Config(model="SASRec", dataset="presplit", config_dict={
            "data_path": path, "benchmark_filename": list(splits), "alias_of_item_id": ["item_id_list"],
            "load_col": {"inter": ["user_id", "item_id_list", "item_id"]}, "train_neg_sample_args": None,
        })
        for split, data in zip(splits, SequentialDataset(config).build()):
            lengths = [len(history.split()) for _, history, _ in splits[split]]
            item_length = data.inter_feat["item_length"].tolist()
            assert item_length == lengths, f"{split} item_length {item_length}, real lengths {lengths}"
            assert (data.inter_feat["item_id_list"] != 0).sum(dim=1).tolist() == lengths
    """),
    "pandas_cow/reset_ent_remapID": Scenario(
        "pandas_cow", "KnowledgeBasedDataset._reset_ent_remapID", "Length of values", """
        # a token_seq field in alias_of_item_id of a knowledge-graph dataset
        from recbole.config import Config
        from recbole.data.dataset import KnowledgeBasedDataset
        similar = {f"i{i}": " ".join(f"i{(i + j) % 8 + 1}" for j in range(1 + i % 3)) for i in range(1, 9)}
        write_items(WORKDIR, "kg", "similar:token_seq", similar)
        path = write_atomic(WORKDIR, "kg", {
            "kg": ["head_id:token\\trelation_id:token\\ttail_id:token"]
                  + [f"e{i}\\tr{i % 2}\\te{i * 5 % 10 + 1}" for i in range(1, 11)],
            "link": ["item_id:token\\tentity_id:token"] + [f"i{i}\\te{i}" for i in range(1, 9)],
        })
        config = {"data_path": path, "load_col": None, "alias_of_item_id": ["similar"]}
        dataset = KnowledgeBasedDataset(Config(model="KGCN", dataset="kg", config_dict=config))
        for iid, ids in zip(dataset.item_feat["item_id"][1:], dataset.item_feat["similar"][1:]):
            assert " ".join(dataset.id2token("item_id", ids)) == similar[dataset.id2token("item_id", iid)]
    """),
    "scipy_dok": Scenario("scipy_dok", None, "_update", """
        from recbole.data import data_preparation
        from recbole_gen.config import Config
        from recbole_gen.data import create_dataset
        from recbole_gen.utils import get_model
        from tiny_data import write_tiny_dataset
        path = write_tiny_dataset(WORKDIR)
        config = Config(model="LightGCN", dataset="tiny", config_dict={"data_path": str(path)})
        train, _, _ = data_preparation(config, create_dataset(config))
        get_model("LightGCN")(config, train.dataset)
    """),
    "torch_load": Scenario("torch_load", None, "weights_only", """
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
    """),
    "torch_amp": Scenario("torch_amp", None, "GradScaler", """
        # torch 2.4 deprecated torch.cuda.amp's GradScaler; the day it is removed, its FutureWarning is an error
        import warnings
        from recbole.data import data_preparation
        from recbole_gen.config import Config
        from recbole_gen.data import create_dataset
        from recbole_gen.utils import get_model, get_trainer
        from tiny_data import write_tiny_dataset
        path = write_tiny_dataset(WORKDIR)
        config = Config(model="BPR", dataset="tiny", config_dict={"data_path": str(path), "checkpoint_dir": str(WORKDIR)})
        train, _, _ = data_preparation(config, create_dataset(config))
        trainer = get_trainer(config["MODEL_TYPE"], "BPR")(config, get_model("BPR")(config, train.dataset))
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            trainer._train_epoch(train, 0, show_progress=False)
    """),
    "ddp_cpu": Scenario("ddp_cpu", None, "device_ids", """
        # RecBole's trainer of a multi-process run (here a 1-process gloo group) wraps a CPU model in DDP
        import socket
        import torch.distributed as dist
        from recbole.data import data_preparation
        from recbole_gen.config import Config
        from recbole_gen.data import create_dataset
        from recbole_gen.utils import get_model, get_trainer
        from tiny_data import write_tiny_dataset
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        path = write_tiny_dataset(WORKDIR)
        config = Config(model="BPR", dataset="tiny", config_dict={
            "data_path": str(path), "checkpoint_dir": str(WORKDIR), "gpu_id": "", "local_rank": 0, "world_size": 1,
            "nproc": 1, "offset": 0, "ip": "127.0.0.1", "port": port})
        try:
            train, _, _ = data_preparation(config, create_dataset(config))
            get_trainer(config["MODEL_TYPE"], "BPR")(config, get_model("BPR")(config, train.dataset))
        finally:
            dist.destroy_process_group()
    """),
    "anomaly_detection": Scenario("anomaly_detection", None, "anomaly detection is on", """
        # importing RecBole's sequential models (sine.py) must not slow every backward pass of the process
        import torch
        from recbole.model.sequential_recommender import SASRec
        assert not torch.is_anomaly_enabled(), "anomaly detection is on"
    """),
}
PATCHES = ("numpy_aliases", "pandas_cow", "scipy_dok", "torch_load", "torch_amp", "ddp_cpu", "anomaly_detection")

PREAMBLE = """
import json, sys, traceback, types, pathlib
sys.path.insert(0, {tests!r})
# import recbole_gen.compat without running recbole_gen/__init__.py (which applies every patch)
package = types.ModuleType("recbole_gen"); package.__path__ = [{package!r}]
sys.modules["recbole_gen"] = package
import recbole_gen.compat as compat
import recbole.data.dataset as recbole_datasets
unpatched = {{method: getattr(recbole_datasets, method.split(".")[0]).__dict__[method.split(".")[1]]
             for method in {methods!r}}}
for name in {patches!r}:
    getattr(compat, "patch_" + {{"numpy_aliases": "numpy_aliases", "pandas_cow": "pandas_copy_on_write",
        "scipy_dok": "scipy_dok_update", "torch_load": "torch_load", "torch_amp": "torch_amp", "ddp_cpu": "ddp_cpu",
        "anomaly_detection": "anomaly_detection"}}[name])()
compat._applied = True
"""

RUNNER = """
def write_atomic(parent, dataset, files):
    # {suffix: lines} as parent/dataset/dataset.suffix; returns parent, RecBole's data_path
    folder = parent / dataset
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, lines in files.items():
        (folder / f"{dataset}.{suffix}").write_text("\\n".join(lines) + "\\n")
    return str(parent)


def write_items(parent, dataset, fields, items):
    # items ({item: its cells}) with their fields (the header after item_id), each seen by three users
    return write_atomic(parent, dataset, {
        "inter": ["user_id:token\titem_id:token"] + [f"u{u}\t{item}" for u in range(1, 4) for item in items],
        "item": [f"item_id:token\t{fields}"] + [f"{item}\t{cells}" for item, cells in items.items()],
    })


run = pathlib.Path.cwd()
outcomes = {}
for key, (code, method) in json.loads((run / "jobs.json").read_text()).items():
    workdir = run / f"job{len(outcomes)}"
    workdir.mkdir()
    if method:  # the RecBole method as it was before patching, for this scenario only
        cls, name = getattr(recbole_datasets, method.split(".")[0]), method.split(".")[1]
        patched = cls.__dict__[name]
        setattr(cls, name, unpatched[method])
    try:
        exec(code, {"WORKDIR": workdir, "write_atomic": write_atomic, "write_items": write_items})
        outcomes[key] = "ok"
    except BaseException:
        outcomes[key] = traceback.format_exc()
    finally:
        if method:
            setattr(cls, name, patched)
(run / "outcomes.json").write_text(json.dumps(outcomes))
"""


def run_scenarios(jobs, patches, workdir):
    """Run ``jobs`` ({key: (scenario, RecBole method to run unpatched or None)}) one after the other
    in one fresh interpreter that applies ``patches``; return each one's outcome: "ok" or its traceback."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "jobs.json").write_text(json.dumps(
        {key: (textwrap.dedent(SCENARIOS[name].code), method) for key, (name, method) in jobs.items()}))
    methods = sorted({method for _, method in jobs.values() if method})
    script = PREAMBLE.format(tests=str(TESTS), package=str(REPO / "recbole_gen"), patches=list(patches),
                             methods=methods) + RUNNER
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=workdir, timeout=600)
    assert (workdir / "outcomes.json").is_file(), result.stderr[-3000:]
    return json.loads((workdir / "outcomes.json").read_text())


@pytest.fixture(scope="session")
def outcomes(tmp_path_factory):
    """``outcomes(patches)``, each set of patches run once (an interpreter costs seconds of imports,
    a scenario a fraction of one). With every patch: each scenario, and each scenario whose patch
    replaces a method once more with that method unpatched. With all patches but one: the other
    scenarios of the one left out."""
    runs = {}

    def get(patches):
        patches = tuple(patches)
        if patches not in runs:
            if patches == PATCHES:
                jobs = {name: (name, None) for name in SCENARIOS}
                jobs.update({f"{name} without": (name, s.replaces) for name, s in SCENARIOS.items() if s.replaces})
            else:
                jobs = {f"{name} without": (name, None) for name, s in SCENARIOS.items()
                        if s.patch not in patches and not s.replaces}
            runs[patches] = run_scenarios(jobs, patches, tmp_path_factory.mktemp("scenarios"))
        return runs[patches]

    return get


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_patch_is_needed_and_sufficient(scenario, outcomes):
    patch, replaces, fails_with, _ = SCENARIOS[scenario]
    with_patch = outcomes(PATCHES)[scenario]
    assert with_patch == "ok", with_patch[-3000:]
    left_out = f"{patch} for {replaces}" if replaces else patch
    without = outcomes(PATCHES if replaces else [name for name in PATCHES if name != patch])[f"{scenario} without"]
    assert without != "ok", f"{scenario} works without {left_out}: the patch is dead code"
    assert fails_with in without, f"{scenario} fails without {left_out}, not with {fails_with!r}:\n{without[-3000:]}"


def test_pandas_patch_is_idempotent():
    from recbole.data.dataset import Dataset

    from recbole_gen.compat.pandas_cow import PATCHED_METHODS, patch_pandas_copy_on_write

    def methods():
        return [getattr(cls, name) for cls, name, _ in PATCHED_METHODS] + [Dataset._fill_nan]

    before = methods()
    patch_pandas_copy_on_write()
    assert methods() == before  # nothing wrapped twice


def test_pandas_4_is_excluded_while_recbole_passes_inplace(tmp_path):
    """RecBole 1.2.1's dataset loading passes ``inplace=`` where pandas 4 removes it (pandas 3.1 announces that with
    a Pandas4Warning): the requirement keeps pandas 4 out and the tested pandas in."""
    import pandas as pd
    from packaging.requirements import Requirement

    from recbole_gen.config import Config
    from recbole_gen.data import create_dataset

    requirements = map(Requirement, tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    pandas = next(requirement for requirement in requirements if requirement.name == "pandas")
    assert not pandas.specifier.contains("4.0") and pandas.specifier.contains(pd.__version__)
    if not hasattr(pd.errors, "Pandas4Warning"):
        pytest.skip(f"pandas {pd.__version__} does not announce pandas 4's removals")
    config = Config(model="BPR", dataset="tiny", config_dict={"data_path": str(write_tiny_dataset(tmp_path))})
    with pytest.warns(pd.errors.Pandas4Warning, match="inplace keyword"):
        create_dataset(config)


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


def test_torch_scatter_stand_in_matches_a_reference_computation():
    """KGIN's and MCCLK's two torch_scatter reductions on torch's scatter_reduce, against per-group torch ops (an index
    without entries, index 5, reduces to 0; gradients flow like the reference's)."""
    import torch

    from recbole_gen.compat.torch_scatter import scatter_mean, scatter_softmax

    src = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    index = torch.tensor([0, 2, 2, 0, 4, 4, 4, 0, 2, 4, 0, 1])
    groups = [torch.nonzero(index == k).flatten() for k in range(6)]
    mean = torch.stack([src[g].mean(0) if len(g) else torch.zeros(3) for g in groups])
    assert torch.allclose(scatter_mean(src=src, index=index, dim_size=6, dim=0), mean, atol=1e-6)
    softmax = torch.zeros(12, 3).index_put(tuple([torch.cat(groups)]), torch.cat([src[g].softmax(0) for g in groups]))
    ours = scatter_softmax(src, index=index, dim=0)
    assert torch.allclose(ours, softmax, atol=1e-6)
    weights = torch.arange(36.0).view(12, 3)
    (mine,) = torch.autograd.grad((ours * weights).sum(), src)
    (reference,) = torch.autograd.grad((softmax * weights).sum(), src)
    assert torch.allclose(mine, reference, atol=1e-5)


@pytest.mark.parametrize("model", ["KGIN", "MCCLK"])
def test_kgin_and_mcclk_train_without_torch_scatter(tmp_path, model):
    """torch_scatter has no wheel for this torch; the stand-in is registered only for these models."""
    from recbole_gen.quick_start import run_recbole
    from tiny_data import write_tiny_knowledge

    data = write_tiny_knowledge(write_tiny_dataset(tmp_path / "data"))
    result = run_recbole(model, "tiny", config_dict={"data_path": str(data), "load_col": None, "epochs": 1,
                                                     "show_progress": False, "embedding_size": 8})
    assert all(np.isfinite(list(result["test_result"].values())))


def test_lightgbm_and_xgboost_get_recboles_lower_case_yaml():
    """RecBole ships lightgbm.yaml and xgboost.yaml and looks up LightGBM.yaml / XGBoost.yaml: found here."""
    from recbole.model.abstract_recommender import GeneralRecommender
    from recbole.utils import InputType

    from recbole_gen import utils
    from recbole_gen.config import Config

    stand_in = type("LightGBM", (GeneralRecommender,), {"input_type": InputType.POINTWISE})  # the real one needs lightgbm
    utils.register_model(stand_in)
    try:
        config = Config(model="LightGBM", dataset="ml-100k")
    finally:
        utils._registered.pop("LightGBM")
    assert config["lgb_params"]["num_leaves"] == 90 and config["lgb_num_boost_round"] == 300

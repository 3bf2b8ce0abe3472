"""RecBole's built-in models run through the plugin exactly as through RecBole (where RecBole's FLOPs estimate fails,
without it), their checkpoints reload to the same test scores, and ``recommend`` gives RecBole's case-study ranking."""
import math
from pathlib import Path

import pytest

from recbole_gen.cli import main, run_recbole_main
from recbole_gen.quick_start import load_data_and_model, run_recbole
from recbole_gen.utils import get_trainer
from tiny_data import write_tiny_dataset

# A fixed subset of ml-100k (users with 20-60 ratings, about a fifth of the interactions) keeps
# these runs to seconds on 2 cores.
SUBSET = {"user_inter_num_interval": "[20,60]", "show_progress": False}
SMALL = {
    "SASRec": {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1,
               "MAX_ITEM_LIST_LENGTH": 10, **SUBSET},
    "BPR": {"epochs": 1, "embedding_size": 16, **SUBSET},
}


def assert_finite(result):
    assert result, "no metrics"
    for name, value in result.items():
        assert math.isfinite(value), f"{name} = {value}"


@pytest.mark.parametrize("model", ["SASRec", "BPR"])
def test_python_api_trains_and_reloads_to_same_scores(model):
    result = run_recbole(model, "ml-100k", config_dict=SMALL[model])
    assert_finite(result["test_result"])
    assert set(result["test_result"]) == {"recall@10", "mrr@10", "ndcg@10", "hit@10", "precision@10"}
    config, reloaded, _, _, _, test_data = load_data_and_model(result["model_file"], checkpoint_paths=True)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, reloaded)
    again = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    assert again == result["test_result"]


@pytest.mark.parametrize("model", ["SASRec", "BPR"])
def test_run_recbole_command_line(model):
    overrides = [f"--{key}={value}" for key, value in SMALL[model].items()]
    assert run_recbole_main([f"--model={model}", "--dataset=ml-100k", "--checkpoint_dir=ckpt", "--log_dir=logs", *overrides]) == 0
    checkpoints = list(Path("ckpt").glob(f"{model}-*.pth"))
    assert len(checkpoints) == 1
    assert list(Path("logs", model).glob(f"{model}-ml-100k-*.log"))
    config, *_ = load_data_and_model(checkpoints[0], checkpoint_paths=True)
    assert config["epochs"] == 1 and config["model"] == model


@pytest.mark.parametrize("model", ["GRU4RecCPR", "SASRecCPR"])
def test_a_failing_flops_estimate_is_one_log_line_and_the_run_goes_on(tmp_path, model):
    """RecBole's FLOPs estimate calls predict, which these two refuse (``assert False``): stock RecBole stops there."""
    data = write_tiny_dataset(tmp_path / "data")
    result = run_recbole(model, "tiny", config_dict={"data_path": str(data), "load_col": None, "epochs": 1,
                                                     "show_progress": False, "MAX_ITEM_LIST_LENGTH": 10,
                                                     "reranker_CAN_NUM": 20})  # its default, 100, > tiny's 30 items
    assert_finite(result["test_result"])
    (log,) = Path("log", model).glob("*.log")
    assert "FLOPs: not estimated (the estimate failed: AssertionError)" in log.read_text()


def test_recommend_lists_a_rankers_top_items_as_recboles_case_study_does(tmp_path, capsys):
    from recbole.utils.case_study import full_sort_topk

    data = write_tiny_dataset(tmp_path / "data")
    result = run_recbole("SASRec", "tiny", config_dict={"data_path": str(data), "load_col": None, "epochs": 1,
                                                        "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1,
                                                        "MAX_ITEM_LIST_LENGTH": 10, "show_progress": False})
    assert main(["recommend", "--model-file", result["model_file"], "--user", "u3", "--k", "5",
                 f"--data_path={data}"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()[1:]]
    _, model, dataset, _, _, test_data = load_data_and_model(result["model_file"], checkpoint_paths=True)
    scores, items = full_sort_topk([dataset.token2id("user_id", "u3")], model, test_data, 5)
    assert [(row[0], row[1], int(row[2]), row[3]) for row in rows] == [
        ("u3", "", rank + 1, item) for rank, item in enumerate(dataset.id2token("item_id", items[0]))]
    assert [float(row[4]) for row in rows] == pytest.approx(scores[0].tolist(), abs=1e-4)

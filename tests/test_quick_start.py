"""RecBole's built-in models run through the plugin exactly as through RecBole, and their
checkpoints reload to the same test scores."""
import math
from pathlib import Path

import pytest

from recbole_gen.cli import run_recbole_main
from recbole_gen.quick_start import load_data_and_model, run_recbole
from recbole_gen.utils import get_trainer

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
    config, reloaded, _, _, _, test_data = load_data_and_model(result["model_file"])
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
    config, *_ = load_data_and_model(checkpoints[0])
    assert config["epochs"] == 1 and config["model"] == model

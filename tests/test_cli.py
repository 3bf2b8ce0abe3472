"""The command line: overrides, plugin models with their own properties layer, and bad input."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_gen import utils
from recbole_gen.cli import parse_overrides, run_recbole_main, UsageError
from recbole_gen.config import Config
from recbole_gen.checkpoint import load_checkpoint
from tiny_data import write_tiny_dataset


class DummySeq(SequentialRecommender):
    """Scores items by similarity to the last history item; its size comes from its yaml."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.item_embedding = torch.nn.Embedding(self.n_items, config["dummy_size"], padding_idx=0)
        self.loss = torch.nn.CrossEntropyLoss()

    def _last(self, interaction):
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        return self.item_embedding(self.gather_indexes(seq.unsqueeze(-1), length - 1).squeeze(-1))

    def calculate_loss(self, interaction):
        logits = self._last(interaction) @ self.item_embedding.weight.T
        return self.loss(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        return (self._last(interaction) * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        return self._last(interaction) @ self.item_embedding.weight.T


@pytest.fixture
def dummy_model(tmp_path):
    properties = tmp_path / "plugin_properties"
    (properties / "model").mkdir(parents=True)
    (properties / "model" / "DummySeq.yaml").write_text("dummy_size: 7\nloss_type: CE\n")
    utils.register_model(DummySeq, properties=properties)
    yield DummySeq
    utils._registered.pop("DummySeq")
    utils._extra_properties.remove(properties)


def test_registered_model_found_with_its_yaml(dummy_model, tmp_path):
    data_path = write_tiny_dataset(tmp_path / "data")
    code = run_recbole_main(["--model=DummySeq", "--dataset=tiny", f"--data_path={data_path}", "--load_col=None", "--epochs=1",
                             "--show_progress=False"])
    assert code == 0
    (checkpoint,) = Path("saved").glob("DummySeq-*.pth")
    state = load_checkpoint(checkpoint)
    assert state["config"]["dummy_size"] == 7
    assert state["state_dict"]["item_embedding.weight"].shape[1] == 7


def test_plugin_yaml_layers_over_recbole_and_overrides_win(dummy_model):
    config = Config(model="DummySeq", dataset="ml-100k", config_dict={"dummy_size": 3})
    assert config["dummy_size"] == 3
    assert config["log_dir"] == "log"  # recbole-gen's overall.yaml
    assert config["MAX_ITEM_LIST_LENGTH"] == 50  # RecBole's sequential defaults still apply


def test_overrides_are_converted_like_recbole():
    assert parse_overrides(["--epochs=5", "--learning_rate=1e-3", "--metrics=['Hit','NDCG']", "--x=True", "--s=abc"]) == {
        "epochs": 5, "learning_rate": 1e-3, "metrics": ["Hit", "NDCG"], "x": True, "s": "abc"}


@pytest.mark.parametrize("arg", ["epochs=5", "--epochs", "--=5", "--a=b=c", "-e"])
def test_malformed_override_rejected(arg):
    with pytest.raises(UsageError, match="--key=value"):
        parse_overrides([arg])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model=SASrec"], "Unknown model 'SASrec'. Did you mean: SASRec"),
        (["--model=NoSuchModel"], "Unknown model 'NoSuchModel'"),
        (["--model=BPR", "--dataset=no-such-data"], "Dataset 'no-such-data' not found"),
        (["--model=BPR", "epochs=3"], "malformed argument 'epochs=3'"),
        (["--model=BPR", "--config_files=missing.yaml"], "config file 'missing.yaml' does not exist"),
    ],
)
def test_bad_input_fails_clearly(args, message, capsys):
    assert run_recbole_main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not Path("saved").exists()


def test_console_scripts_installed():
    bin_dir = Path(sys.executable).parent
    run_recbole = shutil.which("run_recbole", path=str(bin_dir))
    assert run_recbole, "run_recbole console script not installed"
    listed = subprocess.run([run_recbole, "--list-models"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and {"SASRec", "BPR", "GenLMM"} <= set(listed.stdout.split())
    failed = subprocess.run([sys.executable, "-m", "recbole_gen", "run", "--model=Nope"], capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode == 2 and "Unknown model 'Nope'" in failed.stderr and "Traceback" not in failed.stderr


def test_trainer_lookup_by_stage():
    from recbole.trainer import Trainer
    from recbole.utils import ModelType

    assert utils.get_trainer(ModelType.SEQUENTIAL, "SASRec") is Trainer
    assert utils.get_trainer(ModelType.SEQUENTIAL, "SASRec", "sft") is Trainer
    with pytest.raises(utils.UnknownModelError, match="no training stage 'rl'"):
        utils.get_trainer(ModelType.SEQUENTIAL, "SASRec", "rl")

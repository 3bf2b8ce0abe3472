"""Defaults live only in properties/*.yaml: GenLMM's, the SFT loop's, the artifacts' and the RL stage's settings
come out the same whether a user gives a plain dict, run_recbole arguments or a yaml file; wrong values stop
with the key named, before any work."""
import pytest
import yaml

from recbole_gen.cli import parse_overrides
from recbole_gen.config import Config, ConfigError
from recbole_gen.model.genlmm_config import GenLMMSettings
from recbole_gen.trainer.artifacts import PretrainSettings, TokenizerTraining
from recbole_gen.trainer.genlmm import SFTSettings
from recbole_gen.trainer.rl import RLSettings
from recbole_gen.utils import properties_dir

SETTINGS = (GenLMMSettings, SFTSettings, TokenizerTraining, PretrainSettings, RLSettings)
CHOSEN = {"history_len": 3, "rl_group_size": 8, "plan": "item", "learning_rate": 0.0005, "content_fields": ["subgroup"]}
ARGS = ["--history_len=3", "--rl_group_size=8", "--plan=item", "--learning_rate=5e-4", "--content_fields=['subgroup']"]


def _settings(config):
    return [cls.from_config(config) for cls in SETTINGS]


def test_a_dict_run_recbole_arguments_and_a_yaml_file_give_the_same_settings(tmp_path):
    (tmp_path / "chosen.yaml").write_text(yaml.safe_dump(CHOSEN))
    from_dict = _settings(Config(model="GenLMM", dataset="emoji-seq", config_dict=dict(CHOSEN)))
    from_args = _settings(Config(model="GenLMM", dataset="emoji-seq", config_dict=parse_overrides(ARGS)))
    from_file = _settings(Config(model="GenLMM", dataset="emoji-seq", config_file_list=[str(tmp_path / "chosen.yaml")]))
    for a, b, c in zip(from_dict, from_args, from_file):
        assert a.as_dict() == b.as_dict() == c.as_dict(), type(a).__name__
    genlmm, sft, _, _, rl = from_dict
    assert genlmm.history_len == 3 and genlmm.plan == "item" and rl.rl_group_size == 8
    assert genlmm.content_fields == ["subgroup"]


def test_every_settings_field_has_its_default_in_the_yaml():
    documented = {**yaml.safe_load((properties_dir() / "overall.yaml").read_text()),
                  **yaml.safe_load((properties_dir() / "model" / "GenLMM.yaml").read_text())}
    import dataclasses

    fields = {f.name for cls in SETTINGS for f in dataclasses.fields(cls)} - {"show_progress"}  # RecBole's own key
    assert not fields - set(documented), sorted(fields - set(documented))


@pytest.mark.parametrize("key, value, message", [
    ("history_len", "abc", "history_len must be int, got 'abc'"),
    ("num_samples", -1, "num_samples must be >= 1, got -1"),
    ("temperature", -1, "temperature must be >= 0, got -1"),
    ("history_mode", "pixels", "history_mode must be one of semantic, vq, vision"),
    ("top_p", 1.5, "top_p must be in (0, 1]"),
    ("plan", "everything", "plan must be one of none, item, semantic"),
])
def test_a_wrong_value_names_its_key(key, value, message):
    config = Config(model="GenLMM", dataset="emoji-seq", config_dict={key: value})
    with pytest.raises(ConfigError) as error:
        GenLMMSettings.from_config(config)
    assert message in str(error.value)


def test_a_plain_dict_without_the_yaml_layering_is_refused():
    with pytest.raises(ConfigError, match="config has no '[a-z_]+'.*Config"):
        GenLMMSettings.from_config({"history_len": 3})


def test_an_unknown_key_is_warned_with_close_matches(caplog):
    with caplog.at_level("WARNING"):
        Config(model="GenLMM", dataset="emoji-seq", config_dict={"histroy_len": 3, "nosuchkey": 1})
    assert "config key 'histroy_len' is not a setting of RecBole or recbole-gen; did you mean history_len?" in caplog.text
    assert "config key 'nosuchkey' is not a setting" in caplog.text

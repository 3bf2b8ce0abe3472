"""The defaults in code (for configs built without the yaml, e.g. plain dicts) and the documented
defaults in properties/model/GenLMM.yaml must not drift apart."""
import yaml

from recbole_gen.model.core import DEFAULTS
from recbole_gen.trainer.rl import RL_DEFAULTS
from recbole_gen.utils import properties_dir


def test_code_defaults_match_genlmm_yaml():
    documented = yaml.safe_load((properties_dir() / "model" / "GenLMM.yaml").read_text())
    for defaults in (DEFAULTS, RL_DEFAULTS):
        missing = sorted(set(defaults) - set(documented))
        assert not missing, f"keys with a code default but not in GenLMM.yaml: {missing}"
        differ = {k: (v, documented[k]) for k, v in defaults.items() if v != documented[k]}
        assert not differ, f"code default vs GenLMM.yaml: {differ}"

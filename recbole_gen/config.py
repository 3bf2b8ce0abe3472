"""RecBole's ``Config`` with recbole-gen's ``properties/`` layered over RecBole's own.

Order, lowest priority first: RecBole's overall/model/dataset/quick-start yaml, then each
recbole-gen properties layer's ``overall.yaml``, ``quick_start_config/<model type>.yaml``,
``dataset/<dataset>.yaml`` and ``model/<Model>.yaml``, then config files, ``config_dict`` and
command-line overrides as in RecBole.

Unlike RecBole's, this Config does not read ``sys.argv`` behind the caller's back: the
``run_recbole`` command parses ``--key=value`` overrides and passes them in ``config_dict``.
"""
from recbole.config import Config as RecBoleConfig

from recbole_gen.utils import get_model, properties_dirs

QUICK_START_BY_TYPE = {"SEQUENTIAL": "sequential.yaml"}


class Config(RecBoleConfig):
    def _load_cmd_line(self):
        return {}

    def _get_final_config_dict(self):
        """RecBole 1.2.1's defaults contradict themselves for CE-loss models (SASRec, GRU4Rec...):
        overall.yaml samples training negatives, which ``_set_default_parameters`` then refuses.
        Unless the user asked for negatives, a CE model gets none, as RecBole's docs intend."""
        final = super()._get_final_config_dict()
        if final.get("loss_type") == "CE" and "train_neg_sample_args" not in self.external_config_dict:
            final["train_neg_sample_args"] = None
        return final

    def _get_model_and_dataset(self, model, dataset):
        if isinstance(model, str):
            model = get_model(model)
        elif model is None and isinstance(self.external_config_dict.get("model"), str):
            model = get_model(self.external_config_dict["model"])
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        quick_start = QUICK_START_BY_TYPE.get(model_class.type.name)
        for folder in properties_dirs():
            layers = [
                folder / "overall.yaml",
                folder / "quick_start_config" / quick_start if quick_start else None,
                folder / "dataset" / f"{dataset}.yaml",
                folder / "model" / f"{model}.yaml",
            ]
            for layer in layers:
                if layer is not None and layer.is_file():
                    added = self._update_internal_config_dict(str(layer))
                    if added and layer.parent.name == "dataset":
                        self.parameters["Dataset"] += [k for k in added if k not in self.parameters["Dataset"]]

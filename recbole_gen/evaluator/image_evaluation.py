"""Image evaluation inside RecBole's evaluation loop, for generators and rankers alike.

``with_image_evaluation(TrainerClass)`` returns a subclass of any RecBole trainer (recbole-gen's too) that

* ranks a **generator**'s catalogue by its images: ``model.generate_images(batch)`` (the model's one contract
  with the evaluation), embedded by the evaluation encoder and searched in the catalogue (each item's score: its
  best, or mean, cosine to the user's images, ``eval_score_reduce``); with ``gen_rank_by: plan`` by the model's
  own ``full_sort_predict``, with ``both`` by reciprocal-rank fusion of the two;
* hands the images' embeddings (or, for general models, each user's history) to the
  :class:`~recbole_gen.evaluator.collector.ImageCollector` in the batch's ``Interaction``, so
  ``metrics: [Hit, NDCG, TargetSim, FD]`` gives one result dict.

FutureSim needs the user's later items: ``trainer.set_future_data(test_data)``; the validation phase then
uses each user's test item(s) as the future (the test phase has none: NaN).
"""
from logging import getLogger

import torch
from recbole.data.interaction import Interaction

from recbole_gen.evaluator.collector import HISTORY, SAMPLES, ImageCollector
from recbole_gen.evaluator.metrics import wants_image_metrics
from recbole_gen.evaluator.scoring import catalogue_scores, rank_fusion
from recbole_gen.model.generative import GenerativeRecommender

RANK_BY = ("images", "plan", "both")


class ImageEvaluationMixin:
    """Mix in before a RecBole trainer class (see :func:`with_image_evaluation`)."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = ImageCollector(config)
        self.rank_by = config["gen_rank_by"] if isinstance(model, GenerativeRecommender) else "plan"
        if self.rank_by not in RANK_BY:
            raise ValueError(f"gen_rank_by must be one of {', '.join(RANK_BY)}, got {self.rank_by!r}")
        self._future_by_user = self._future_dataset = self.catalogue = None
        self.image_metric_info = None

    def set_future_data(self, later_data):
        """Remember the later phase's targets (e.g. ``test_data``) as the future of earlier phases."""
        dataset = getattr(later_data, "_dataset", later_data)
        uid, iid = self.config["USER_ID_FIELD"], self.config["ITEM_ID_FIELD"]
        future = {}
        for user, item in zip(dataset.inter_feat[uid].tolist(), dataset.inter_feat[iid].tolist()):
            future.setdefault(int(user), []).append(int(item))
        self._future_by_user, self._future_dataset = future, dataset

    @property
    def _draws(self):
        return self.rank_by != "plan"

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data or not (self._draws or wants_image_metrics(self.config)):
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        from recbole.data.dataloader import FullSortEvalDataLoader

        from recbole_gen.evaluator.oracle import build_oracle_judge
        from recbole_gen.retrieval.catalogue import ImageCatalogue

        if not isinstance(eval_data, FullSortEvalDataLoader):
            raise ValueError("image metrics and generators need full-sort evaluation (eval_args: {mode: full}): "
                             "they score the whole catalogue")
        dataset = eval_data._dataset
        if getattr(dataset, "image_store", None) is None:
            raise ValueError("image metrics need a dataset with item images: build it with "
                             "recbole_gen.data.create_dataset(config, images=True) (run_recbole does)")
        self.catalogue = ImageCatalogue.from_config(self.config, dataset.image_store)
        future = self._future_by_user if dataset is not self._future_dataset else None
        self.eval_collector.set_image_context(self.catalogue, build_oracle_judge(self.config, dataset, self.catalogue), future)
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        self.image_metric_info = {"encoder": self.catalogue.encoder.name, "encoder_settings": self.catalogue.encoder.settings(),
                                  "index": self.catalogue.index.kind, "catalogue_items": self.catalogue.num_valid}
        getLogger().info(f"image evaluation by encoder {self.catalogue.describe()}")
        return result

    def _full_sort_batch_eval(self, batched_data):
        if not self._draws:
            interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
            history = self._history(batched_data, len(interaction))
            if history is not None:
                interaction.update(Interaction({HISTORY: history}))
            return interaction, scores, positive_u, positive_i
        interaction, history_index, positive_u, positive_i = batched_data
        interaction = interaction.to(self.device)
        pixels = self.model.generate_images(interaction).pixels
        batch, n = pixels.shape[:2]
        samples = self.catalogue.encode(pixels.flatten(0, 1)).view(batch, n, -1)
        scores = catalogue_scores(samples, self.catalogue, reduce=self.config["eval_score_reduce"]).to(self.device)
        if self.rank_by == "both":
            scores = rank_fusion(scores, self.model.full_sort_predict(interaction).float())
        scores[:, 0] = -torch.inf
        if history_index is not None:
            scores[history_index] = -torch.inf
        interaction.update(Interaction({SAMPLES: samples}))
        return interaction, scores, positive_u, positive_i

    def _history(self, batched_data, batch):
        """Each user's training items (RecBole's ``history_index``) as 0-padded rows, for models without sequences."""
        if self.config["ITEM_ID_FIELD"] + self.config["LIST_SUFFIX"] in batched_data[0] or batched_data[1] is None:
            return None
        rows, items = (t.cpu() for t in batched_data[1])
        if rows.numel() == 0:
            return None
        counts = torch.bincount(rows, minlength=batch)
        history = torch.zeros(batch, int(counts.max()), dtype=torch.long)
        order = torch.argsort(rows, stable=True)
        rows, items = rows[order], items[order]
        starts = torch.cumsum(counts, 0) - counts
        history[rows, torch.arange(len(rows)) - starts[rows]] = items
        return history


_WRAPPED = {}


def with_image_evaluation(trainer_class):
    """``trainer_class`` with image evaluation (a cached subclass; unchanged if it has it already)."""
    if issubclass(trainer_class, ImageEvaluationMixin):
        return trainer_class
    if trainer_class not in _WRAPPED:
        _WRAPPED[trainer_class] = type(
            f"{trainer_class.__name__}WithImageEvaluation", (ImageEvaluationMixin, trainer_class),
            {"__module__": __name__, "__doc__": f"{trainer_class.__name__} + recbole-gen image evaluation."},
        )
    return _WRAPPED[trainer_class]

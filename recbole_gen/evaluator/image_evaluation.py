"""Image evaluation inside RecBole's evaluation loop, for generators and rankers alike.

``with_image_evaluation(TrainerClass)`` returns a subclass of any RecBole trainer (recbole-gen's too) that

* ranks a **generator**'s catalogue by its images: ``model.generate_images(batch)`` (the model's one contract
  with the evaluation), embedded by the evaluation encoder and searched in the catalogue (each item's score: its
  best, or mean, cosine to the user's images, ``eval_score_reduce``); with ``gen_rank_by: plan`` by the model's
  own ``full_sort_predict``, with ``both`` by reciprocal-rank fusion of the two; on a large catalogue (an approximate
  index, ``gen_rank_from``) only each user's top items from the index search reach RecBole's collector, never a
  ``[users, item_num]`` score matrix;
* hands the images' embeddings (and, for general models, each user's training items as its consumed items) to
  the :class:`~recbole_gen.evaluator.collector.ImageCollector` in the batch's ``Interaction``, so
  ``metrics: [Hit, NDCG, TargetSim, FD]`` gives one result dict.

Under ``repeatable: False`` nothing a user already took is ranked (RecBole masks a general model's training items;
recbole-gen's sequential loader hands a sequential model's consumed items over as ``history_index``, masked here
for every model, see :mod:`recbole_gen.data.dataloader`), and a generator is asked not to plan them
(``generate_images(..., exclude=consumed)``).

FutureSim needs the user's later items: ``trainer.set_future_data(test_data)``; the validation phase then
uses each user's test item(s) as the future (the test phase has none: NaN).

An evaluation leaves the random streams as it found them (torch's, numpy's and Python's, which RecBole's data
loaders and BERT4Rec's masking draw from): building the catalogue or drawing images during a validation must not
change the next epoch, so a model trains the same whichever metrics it is validated with.

Under ``--nproc > 1`` each rank evaluates its shard of the users and the collector gathers every rank's rows, so
every metric (FD, ImageCoverage, Diversity too) is computed once on all users, as in one process, instead of
RecBole's average of per-rank results; rank 0 encodes the catalogue into the cache, the others read it.
"""
from logging import getLogger

import torch
from recbole.data.interaction import Interaction

from recbole_gen.data.dataloader import CONSUMED
from recbole_gen.evaluator.collector import SAMPLE_PLANS, SAMPLES, ImageCollector
from recbole_gen.evaluator.metrics import wants_image_metrics
from recbole_gen.evaluator.scoring import TopKScores, catalogue_scores, catalogue_topk, rank_fusion
from recbole_gen.model.generative import GenerativeRecommender
from recbole_gen.trainer.distributed import is_distributed
from recbole_gen.utils import training_randomness_kept, with_mixin

RANK_BY = ("images", "plan", "both")
RANK_FROM = ("auto", "scores", "index")


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
        with training_randomness_kept():
            return self._evaluate(eval_data, load_best_model, model_file, show_progress)

    def _evaluate(self, eval_data, load_best_model, model_file, show_progress):
        from recbole.data.dataloader import FullSortEvalDataLoader

        full_sort = isinstance(eval_data, FullSortEvalDataLoader)
        if eval_data:
            self.eval_collector.start_evaluation(eval_data.sample_size, gather=full_sort and is_distributed(self.config))
        if not eval_data or not (self._draws or wants_image_metrics(self.config)):
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        from recbole_gen.evaluator.oracle import build_oracle_judge
        from recbole_gen.retrieval.catalogue import ImageCatalogue

        if not full_sort:
            raise ValueError("image metrics and generators need full-sort evaluation (eval_args: {mode: full}): "
                             "they score the whole catalogue")
        dataset = eval_data._dataset
        if getattr(dataset, "image_store", None) is None:
            raise ValueError("image metrics need a dataset with item images: build it with "
                             "recbole_gen.data.create_dataset(config, images=True) (run_recbole does)")
        self.catalogue = ImageCatalogue.from_config(self.config, dataset.image_store)  # by all ranks together
        future = self._future_by_user if dataset is not self._future_dataset else None
        self.eval_collector.set_image_context(self.catalogue, build_oracle_judge(self.config, dataset, self.catalogue), future)
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        self.image_metric_info = {"encoder": self.catalogue.encoder.name, "encoder_settings": self.catalogue.encoder.settings(),
                                  "index": self.catalogue.index.kind, "catalogue_items": self.catalogue.num_valid}
        getLogger().info(f"image evaluation by encoder {self.catalogue.describe()}")
        return result

    def _map_reduce(self, result, num_sample):
        """RecBole averages per-rank results; a gathered evaluation's result is already the whole one."""
        return result if self.eval_collector.gathers else super()._map_reduce(result, num_sample)

    def _full_sort_batch_eval(self, batched_data):
        if not self._draws:
            interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
            if CONSUMED not in interaction and batched_data[1] is not None:  # a general model: its training items
                interaction.update(Interaction({CONSUMED: self._padded(batched_data[1], len(interaction))}))
            return interaction, scores, positive_u, positive_i
        interaction, history_index, positive_u, positive_i = batched_data
        interaction = interaction.to(self.device)
        exclude = interaction[CONSUMED] if history_index is not None else None
        generation = self.model.generate_images(interaction, exclude=exclude)
        batch, n = generation.pixels.shape[:2]
        samples = self.catalogue.encode(generation.pixels.flatten(0, 1)).view(batch, n, -1)
        interaction.update(Interaction({SAMPLES: samples}))
        if generation.plans_are_items:
            interaction.update(Interaction({SAMPLE_PLANS: generation.plans.to(self.device)}))
        reduce = self.config["eval_score_reduce"]
        if self._ranks_from_index():
            scores, items = catalogue_topk(samples, self.catalogue, max(self.config["topk"]), reduce, exclude)
            return interaction, TopKScores(scores, items, self.catalogue.item_num), positive_u, positive_i
        scores = catalogue_scores(samples, self.catalogue, reduce=reduce, exclude=exclude).to(self.device)
        if self.rank_by == "both":
            scores = rank_fusion(scores, self.model.full_sort_predict(interaction).float())
        scores[:, 0] = -torch.inf
        return interaction, scores, positive_u, positive_i

    def _ranks_from_index(self):
        """Whether the images' ranking reaches RecBole as each user's top items from the index search (``gen_rank_from:
        index``; ``auto``: where the index is approximate, so that scoring every item would be the larger cost). It
        needs ``gen_rank_by: images``, ``eval_score_reduce`` ``interleave`` or ``max`` and only top-k metrics."""
        mode = self.config["gen_rank_from"]
        if mode not in RANK_FROM:
            raise ValueError(f"gen_rank_from must be one of {', '.join(RANK_FROM)}, got {mode!r}")
        if mode == "scores":
            return False
        register = self.eval_collector.register
        fits = (self.rank_by == "images" and self.config["eval_score_reduce"] in ("interleave", "max")
                and not (register.need("rec.meanrank") or register.need("rec.score")))
        if mode == "index" and not fits:
            raise ValueError("gen_rank_from: index takes each user's top items from the index search: it needs "
                             "gen_rank_by: images, eval_score_reduce: interleave or max, and only top-k metrics "
                             "(Hit, NDCG, MRR, ...; not GAUC); set gen_rank_from: scores")
        return fits and (mode == "index" or not self.catalogue.index.exact)

    @staticmethod
    def _padded(history_index, batch):
        """RecBole's ``history_index`` (rows, items) as 0-padded rows ``[batch, longest]``."""
        rows, items = (t.cpu() for t in history_index)
        counts = torch.bincount(rows, minlength=batch)
        padded = torch.zeros(batch, max(1, int(counts.max()) if len(counts) else 1), dtype=torch.long)
        order = torch.argsort(rows, stable=True)
        rows, items = rows[order], items[order]
        starts = torch.cumsum(counts, 0) - counts
        padded[rows, torch.arange(len(rows)) - starts[rows]] = items
        return padded


def with_image_evaluation(trainer_class):
    """``trainer_class`` with image evaluation (a cached subclass; unchanged if it has it already)."""
    return with_mixin(trainer_class, ImageEvaluationMixin)

"""Image metrics inside RecBole's evaluation loop, for generators and rankers alike.

``with_image_metrics(TrainerClass)`` returns a subclass of any RecBole trainer whose ``evaluate``
also fills the collector keys that recbole-gen's registered metrics (TargetSim, Novelty, FD, ...)
aggregate, so ``metrics: [Hit, NDCG, TargetSim, FD]`` gives one result dict.

Per evaluation batch the "samples" of each user are:

* for a **generator**: the embeddings its ``full_sort_predict`` left in
  ``model.last_sample_embeddings`` (``FloatTensor[B, n, D]``, from the evaluation encoder, i.e.
  ``ImageCatalogue.encode``; optionally ``model.last_sample_mask`` ``BoolTensor[B, n]``). The
  trainer sets the attribute to ``None`` before each batch, so stale values are never reused;
* for a **ranker** (no such attribute, or ``None``): the catalogue embeddings of its top-``n``
  items by score, ``n = eval_image_samples``.

FutureSim needs the user's later items: call ``trainer.set_future_data(test_data)`` once; the
validation phase then uses each user's test item(s) as the future. The phase whose data was given
(and any phase without it) has no future: FutureSim is NaN there.
"""
from logging import getLogger

import torch

from recbole_gen.evaluator.metrics import wants_image_metrics

GEN_KEYS = ("target_sim", "target_sim_best", "history_sim", "future_sim", "diversity", "novelty",
            "oracle_utility", "nearest")


class ImageMetricsMixin:
    """Mix in before a RecBole trainer class (see :func:`with_image_metrics`)."""

    _future_by_user = None
    _future_dataset = None
    _image_active = False
    _image_judge = None
    image_catalogue = None
    image_metric_info = None

    # ------------------------------------------------------------------ public
    def set_future_data(self, later_data):
        """Remember the later phase's targets (e.g. ``test_data``) as the future of earlier phases."""
        dataset = getattr(later_data, "_dataset", later_data)
        uid, iid = self.config["USER_ID_FIELD"], self.config["ITEM_ID_FIELD"]
        users = dataset.inter_feat[uid].tolist()
        items = dataset.inter_feat[iid].tolist()
        future = {}
        for user, item in zip(users, items):
            future.setdefault(int(user), []).append(int(item))
        self._future_by_user, self._future_dataset = future, dataset

    def image_setup(self, dataset):
        """Build (once) the catalogue and the oracle judge for ``dataset``."""
        from recbole_gen.evaluator.catalogue import ImageCatalogue
        from recbole_gen.evaluator.oracle import build_oracle_judge

        if self.image_catalogue is None:
            self.image_catalogue = ImageCatalogue.from_config(self.config, dataset)
            self._image_judge = build_oracle_judge(self.config, dataset, self.image_catalogue)
        return self.image_catalogue

    # ------------------------------------------------------------------ RecBole hooks
    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data or not wants_image_metrics(self.config):
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        from recbole.data.dataloader import FullSortEvalDataLoader

        if not isinstance(eval_data, FullSortEvalDataLoader):
            raise ValueError(
                "image metrics need full-sort evaluation (eval_args: {mode: full}): they score the whole catalogue"
            )
        catalogue = self.image_setup(eval_data._dataset)
        struct = self.eval_collector.data_struct
        for key in [k for k in struct._data_dict if k.startswith("gen.")]:
            del struct[key]
        self._image_use_future = self._future_by_user is not None and eval_data._dataset is not self._future_dataset
        self._image_active = True
        try:
            result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        finally:
            self._image_active = False
        self.image_metric_info = {"encoder": catalogue.encoder.name, "encoder_settings": catalogue.encoder.settings(),
                                  "index": catalogue.index.kind, "catalogue_items": catalogue.num_valid}
        getLogger().info(f"image metrics by encoder {catalogue.describe()}")
        return result

    def _full_sort_batch_eval(self, batched_data):
        self._image_reset_model()
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self._image_active:
            self._collect_image_metrics(batched_data, interaction, scores, positive_u, positive_i)
        return interaction, scores, positive_u, positive_i

    # ------------------------------------------------------------------ internals
    def _image_reset_model(self):
        if self._image_active and hasattr(self.model, "last_sample_embeddings"):
            self.model.last_sample_embeddings = None
            if hasattr(self.model, "last_sample_mask"):
                self.model.last_sample_mask = None

    def _image_samples(self, scores):
        catalogue = self.image_catalogue
        samples = getattr(self.model, "last_sample_embeddings", None)
        if samples is not None:
            if samples.dim() != 3 or samples.shape[0] != scores.shape[0] or samples.shape[2] != catalogue.dim:
                raise ValueError(
                    f"model.last_sample_embeddings has shape {tuple(samples.shape)}; expected "
                    f"[{scores.shape[0]}, num_samples, {catalogue.dim}] from the evaluation encoder "
                    f"({catalogue.encoder.describe()})"
                )
            mask = getattr(self.model, "last_sample_mask", None)
            return samples.detach().float().cpu(), None if mask is None else mask.cpu().bool()
        n = int(self.config["eval_image_samples"] or 1)
        top_scores, top_items = torch.topk(scores.detach().float().cpu(), min(n, scores.shape[1]), dim=1)
        mask = torch.isfinite(top_scores) & (top_items > 0) & catalogue.has_image[top_items]
        return catalogue.embeddings[top_items], mask

    def _image_history(self, batched_data, interaction, batch):
        seq_field = self.config["ITEM_ID_FIELD"] + self.config["LIST_SUFFIX"]
        if seq_field in interaction:
            return interaction[seq_field].cpu()
        history_index = batched_data[1]
        if history_index is None:
            return None
        rows, items = (t.cpu() for t in history_index)
        if rows.numel() == 0:
            return None
        counts = torch.bincount(rows, minlength=batch)
        history = torch.zeros(batch, int(counts.max()), dtype=torch.long)
        order = torch.argsort(rows, stable=True)
        rows, items = rows[order], items[order]
        starts = torch.cumsum(counts, 0) - counts
        history[rows, torch.arange(len(rows)) - starts[rows]] = items
        return history

    def _image_future(self, interaction, batch):
        if not getattr(self, "_image_use_future", False):
            return None
        users = interaction[self.config["USER_ID_FIELD"]].cpu().tolist()
        lists = [self._future_by_user.get(int(u), []) for u in users]
        width = max((len(x) for x in lists), default=0)
        future = torch.zeros(batch, max(width, 1), dtype=torch.long)
        for row, items in enumerate(lists):
            future[row, :len(items)] = torch.tensor(items, dtype=torch.long)
        return future

    def _collect_image_metrics(self, batched_data, interaction, scores, positive_u, positive_i):
        from recbole_gen.evaluator.functional import FrechetStats, image_metrics

        catalogue = self.image_catalogue
        batch = scores.shape[0]
        target = torch.zeros(batch, dtype=torch.long)
        target[positive_u.cpu()] = positive_i.cpu()  # one positive per row (sequential next item)
        samples, mask = self._image_samples(scores)
        uid = self.config["USER_ID_FIELD"]
        user_ids = interaction[uid].cpu() if uid in interaction else None
        values = image_metrics(
            samples, target, self._image_history(batched_data, interaction, batch),
            self._image_future(interaction, batch), catalogue.embeddings, index=catalogue.index,
            sample_mask=mask, user_ids=user_ids, judge=self._image_judge,
        )
        struct = self.eval_collector.data_struct
        for key in GEN_KEYS:
            struct.update_tensor(f"gen.{key}", values[key])
        keep = torch.ones(samples.shape[:2], dtype=torch.bool) if mask is None else mask
        real_ok = catalogue.has_image[target]
        struct.update_tensor("gen.fd_stats", FrechetStats.row(
            catalogue.fd_features(samples[keep]), catalogue.fd_features(catalogue.embeddings[target[real_ok]])
        ))
        struct.set("gen.num_catalogue_items", torch.tensor([catalogue.num_valid]))


_WRAPPED = {}


def with_image_metrics(trainer_class):
    """``trainer_class`` with image metrics (a cached subclass; returned unchanged if it has them)."""
    if issubclass(trainer_class, ImageMetricsMixin):
        return trainer_class
    if trainer_class not in _WRAPPED:
        _WRAPPED[trainer_class] = type(
            f"{trainer_class.__name__}WithImageMetrics", (ImageMetricsMixin, trainer_class),
            {"__module__": __name__, "__doc__": f"{trainer_class.__name__} + recbole-gen image metrics."},
        )
    return _WRAPPED[trainer_class]

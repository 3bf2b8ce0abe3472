"""RecBole's ``Collector`` plus the data the image metrics need, collected when a metric asks for it.

Like RecBole's own collector, what is collected is decided by registration: when ``metrics`` lists an image
metric (TargetSim, FD, ...), ``self.register.need("gen.image")`` holds and every evaluation batch adds its
per-user image values under ``gen.*`` keys. Each user's "samples" are:

* for a **generator**: the embeddings of the images it drew, which the evaluation loop puts in the batch's
  ``Interaction`` under :data:`SAMPLES` (and :data:`SAMPLE_MASK`);
* for a **ranker**: the catalogue embeddings of its top-``eval_image_samples`` items by score.

A generator on a large catalogue hands over :class:`~recbole_gen.evaluator.scoring.TopKScores` (each user's top
items from the index search) instead of a ``[users, item_num]`` score matrix; :meth:`ImageCollector.eval_batch_collect`
then makes RecBole's top-k entries (``rec.items``, ``rec.topk``) from them directly.

Each row's consumed items (the items its user took before the target: :data:`~recbole_gen.data.dataloader.CONSUMED`,
from recbole-gen's sequential loader, or a general model's training items, which the loop puts there) tell the judge
which images show a repeat, and their count is the target's position in the user's sequence; without them (a
RecBole loader) ``item_id_list`` stands in. General models (Pop) have no ``item_id_list``: their history is the
consumed items.
The Fréchet statistics are running sums (memory does not grow with the number of batches); with ``eval_fd_per_user``
each user's FD features are kept as well (``eval_fd_dim`` floats per image), so that FD can be recomputed on resampled
users. Every evaluated row's user id is kept under :data:`USER`, and the last evaluation's data struct stays
available as ``last_struct``: :mod:`recbole_gen.evaluator.intervals` turns it into per-user values. Under
``--nproc > 1`` the struct is the whole evaluation's, every rank's rows gathered (:mod:`recbole_gen.evaluator.distributed`).
"""
import torch
from recbole.evaluator.collector import Collector

from recbole_gen.data.dataloader import CONSUMED, training_counts
from recbole_gen.evaluator.distributed import RECBOLE_ROW_KEYS, gather_struct, row_positions
from recbole_gen.evaluator.functional import FrechetStats, image_metrics
from recbole_gen.evaluator.metrics import NEED
from recbole_gen.evaluator.scoring import TopKScores
from recbole_gen.model.ties import tie_order, top_items

SAMPLES, SAMPLE_MASK, SAMPLE_PLANS = "gen_sample_emb", "gen_sample_mask", "gen_sample_plans"
USER, POSITION, TARGET_COUNT = "eval.user", "eval.position", "eval.target_count"
PER_USER = ("target_sim", "target_sim_best", "history_sim", "future_sim", "diversity", "novelty", "oracle_utility",
            "repeat_rate", "plan_fidelity", "nearest")
ROW_KEYS = (*RECBOLE_ROW_KEYS, USER, POSITION, TARGET_COUNT, "gen.fd_generated", "gen.fd_real", *(f"gen.{k}" for k in PER_USER))
SUM_KEYS = ("gen.fd_stats",)


class ImageCollector(Collector):
    def __init__(self, config):
        super().__init__(config)
        self.catalogue = self.judge = self.future_by_user = self.last_struct = self.item_counts = self.tie_order = None
        self.eval_rows = self.rows_seen = 0
        self.gathers = False

    def data_collect(self, train_data):
        """RecBole's, and each item's interactions in the training split: every evaluated row keeps its target's
        count (:data:`TARGET_COUNT`), which splits the users into cold, tail and head targets."""
        super().data_collect(train_data)
        self.item_counts = training_counts(train_data._dataset)

    def start_evaluation(self, rows, gather):
        """A new evaluation of ``rows`` rows (the eval loader's ``sample_size``); ``gather``: this rank holds a shard
        of them (multi-process full-sort evaluation) and the struct is to be gathered from every rank."""
        self.eval_rows, self.rows_seen, self.gathers = int(rows), 0, bool(gather)

    def set_image_context(self, catalogue, judge=None, future_by_user=None):
        """The catalogue (evaluation encoder + index), the OracleUtility judge, and each user's later items (the
        validation phase's future is the test item; None where there is none: FutureSim is then NaN)."""
        self.catalogue, self.judge, self.future_by_user = catalogue, judge, future_by_user

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        if isinstance(scores_tensor, TopKScores):
            self._collect_topk(scores_tensor, positive_u.cpu(), positive_i.cpu())
        elif scores_tensor.dim() == 2:  # a full ranking: RecBole's, with equal scores in the seeded tie order
            self._collect_ranking(scores_tensor, interaction, positive_u, positive_i)
        else:
            super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        uid = self.config["USER_ID_FIELD"]
        if uid in interaction:
            self.data_struct.update_tensor(USER, interaction[uid].cpu())
        batch = scores_tensor.shape[0]
        if self.item_counts is not None:
            self.data_struct.update_tensor(TARGET_COUNT, self.item_counts[self._targets(batch, positive_u, positive_i)])
        real = torch.ones(batch, dtype=torch.bool)
        if self.gathers:
            positions = row_positions(self.config, self.rows_seen, batch)
            self.data_struct.update_tensor(POSITION, positions)
            real = positions < self.eval_rows  # the sampler's padding repeats users: kept out of the running sums
        self.rows_seen += batch
        if self.register.need(NEED):
            self._collect_images(scores_tensor, interaction, positive_u, positive_i, real)

    def get_data_struct(self):
        struct = super().get_data_struct()
        for key in [k for k in self.data_struct._data_dict if k.startswith("gen.") or k in (USER, POSITION, TARGET_COUNT)]:
            del self.data_struct[key]
        if self.gathers:
            struct = gather_struct(struct, ROW_KEYS, SUM_KEYS, POSITION, self.eval_rows)
        self.last_struct = struct
        return struct

    def _collect_ranking(self, scores, interaction, positive_u, positive_i):
        """RecBole's collection of a ``[B, items]`` ranking over the columns permuted by :func:`tie_order` (its top-k
        would otherwise pick among equal scores by column, i.e. by item id: :mod:`recbole_gen.model.ties`); the rows it
        adds that name items (``rec.items``) or hold columns (``rec.score``) are mapped back to item ids."""
        order = self._tie_order(scores.shape[1]).to(scores.device)
        place = torch.empty_like(order)
        place[order] = torch.arange(len(order), device=order.device)
        super().eval_batch_collect(scores[:, order], interaction, positive_u, place[positive_i.to(order.device)])
        batch, stored = len(scores), self.data_struct._data_dict
        if self.register.need("rec.items"):
            stored["rec.items"][-batch:] = order[stored["rec.items"][-batch:]]
        if self.register.need("rec.score"):
            stored["rec.score"][-batch:] = stored["rec.score"][-batch:][:, place]

    def _tie_order(self, n):
        if self.tie_order is None or len(self.tie_order) != n:
            self.tie_order = tie_order(n, self.config["seed"])
        return self.tie_order

    def _collect_topk(self, top, positive_u, positive_i):
        """RecBole's ``rec.items`` and ``rec.topk`` as ``Collector.eval_batch_collect`` derives them from dense scores
        (top items; whether each is a positive, then the row's positive count), from the top items alone: a positive
        outside them is "not in the top-k", all those metrics need to know."""
        dense = [key for key in ("rec.meanrank", "rec.score") if self.register.need(key)]
        if dense:
            raise ValueError(f"the metrics need every item's score ({', '.join(dense)}, e.g. GAUC), which the index "
                             f"search's top-k does not give: set gen_rank_from: scores")
        items = top.items[:, :max(self.topk)]
        if self.register.need("rec.items"):
            self.data_struct.update_tensor("rec.items", items.clamp(min=0))  # no item found: the padding item
        if self.register.need("rec.topk"):
            hits = torch.zeros(items.shape, dtype=torch.int)
            hits.index_put_((positive_u,), (items[positive_u] == positive_i.unsqueeze(1)).int(), accumulate=True)
            positives = torch.bincount(positive_u, minlength=len(items)).int().unsqueeze(1)
            self.data_struct.update_tensor("rec.topk", torch.cat([hits, positives], dim=1))

    def _samples(self, scores, interaction):
        if SAMPLES in interaction:
            mask = interaction[SAMPLE_MASK].cpu().bool() if SAMPLE_MASK in interaction else None
            return interaction[SAMPLES].detach().float().cpu(), mask
        catalogue = self.catalogue
        n = self.config["eval_image_samples"]
        scores = scores.detach().float().cpu()
        items = top_items(scores, min(n, scores.shape[1]), self._tie_order(scores.shape[1]))
        mask = torch.isfinite(scores.gather(1, items)) & (items > 0) & catalogue.has_image[items]
        return catalogue.embeddings[items], mask

    def _history(self, interaction):
        seq_field = self.config["ITEM_ID_FIELD"] + self.config["LIST_SUFFIX"]
        for field in (seq_field, CONSUMED):
            if field in interaction:
                return interaction[field].cpu()
        return None

    def _consumed(self, interaction):
        """Each row's consumed items ``[B, c]`` (0-padded) and the target's position in its user's sequence ``[B]``."""
        if CONSUMED in interaction:
            consumed = interaction[CONSUMED].cpu()
            return consumed, (consumed > 0).sum(1)
        seq_field = self.config["ITEM_ID_FIELD"] + self.config["LIST_SUFFIX"]
        if seq_field in interaction:
            return interaction[seq_field].cpu(), interaction[self.config["ITEM_LIST_LENGTH_FIELD"]].cpu()
        return None, None

    def _future(self, interaction, batch):
        if self.future_by_user is None:
            return None
        users = interaction[self.config["USER_ID_FIELD"]].cpu().tolist()
        lists = [self.future_by_user.get(int(u), []) for u in users]
        future = torch.zeros(batch, max([1] + [len(x) for x in lists]), dtype=torch.long)
        for row, items in enumerate(lists):
            future[row, :len(items)] = torch.tensor(items, dtype=torch.long)
        return future

    @staticmethod
    def _targets(batch, positive_u, positive_i):
        """Each row's true next item ``[batch]`` (a sequential row has one positive; a general model's row keeps its
        last)."""
        target = torch.zeros(batch, dtype=torch.long)
        target[positive_u.cpu()] = positive_i.cpu()
        return target

    def _collect_images(self, scores, interaction, positive_u, positive_i, real):
        catalogue, struct = self.catalogue, self.data_struct
        batch = scores.shape[0]
        target = self._targets(batch, positive_u, positive_i)
        samples, mask = self._samples(scores, interaction)
        uid = self.config["USER_ID_FIELD"]
        consumed, positions = self._consumed(interaction)
        values = image_metrics(samples, target, self._history(interaction), self._future(interaction, batch),
                               catalogue.embeddings, index=catalogue.index, sample_mask=mask,
                               user_ids=interaction[uid].cpu() if uid in interaction else None, judge=self.judge,
                               consumed_ids=consumed, positions=positions,
                               plan_ids=interaction[SAMPLE_PLANS].cpu() if SAMPLE_PLANS in interaction else None)
        for key in PER_USER:
            struct.update_tensor(f"gen.{key}", values[key])
        keep = torch.ones(samples.shape[:2], dtype=torch.bool) if mask is None else mask
        stats = FrechetStats.row(catalogue.fd_features(samples[keep & real.unsqueeze(1)]),
                                 catalogue.fd_features(catalogue.embeddings[target[catalogue.has_image[target] & real]]))
        struct.set("gen.fd_stats", stats if "gen.fd_stats" not in struct else struct["gen.fd_stats"] + stats)
        if self.config["eval_fd_per_user"]:  # NaN rows: images FD leaves out
            generated = catalogue.fd_features(samples).view(batch, samples.shape[1], -1)
            struct.update_tensor("gen.fd_generated", generated.masked_fill(~keep.unsqueeze(-1), float("nan")))
            real = catalogue.fd_features(catalogue.embeddings[target])
            struct.update_tensor("gen.fd_real", real.masked_fill(~catalogue.has_image[target].unsqueeze(-1), float("nan")))
        struct.set("gen.num_catalogue_items", torch.tensor([catalogue.num_valid]))

"""What every generative recommender here shares: the generate -> evaluate contract and the public API.

A :class:`GenerativeRecommender` is a RecBole ``SequentialRecommender`` whose answer is an image. Its one
contract with the evaluation side is :meth:`GenerativeRecommender.generate_images`: a batch of users (RecBole's
``item_id_list`` / ``item_length``, never the target item) in, :class:`Generation` out. The evaluator
(recbole_gen/evaluator/) embeds the images, searches the catalogue, scores and collects metrics; the model
imports nothing from it. :meth:`GenerativeRecommender.generate` is the user-facing API on top (by user token
or explicit history, PNGs and a manifest), the same for every generator.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_gen.files import atomic_write, atomic_write_bytes
from recbole_gen.model import sharding


class UnknownUserError(ValueError):
    """A user token that the model's dataset does not hold."""


class NotARankerError(NotImplementedError):
    """A generator asked for catalogue scores it does not compute itself (the evaluator ranks its images)."""


@dataclass
class Generation:
    """What a generator draws for ``U`` users: ``pixels [U, n, 3, S, S]`` in [0, 1]; ``plans [U, n]`` (the
    planned item, or with ``plans_are_items`` False a semantic code, of each image; -1 without a plan);
    ``histories``: the item ids each user's images were conditioned on (after ``history_len``); ``tokens`` (the
    generator's own representation, e.g. image tokens); ``manifest``: one row per image once
    :meth:`GenerativeRecommender.generate` describes it."""

    pixels: torch.Tensor
    plans: torch.Tensor
    histories: list
    tokens: torch.Tensor = None
    manifest: list = field(default_factory=list)
    plans_are_items: bool = True


def internal_user(dataset, user):
    """RecBole's internal id of ``user`` (an external token, or already an internal id) in ``dataset``."""
    if isinstance(user, (int, np.integer)):
        return int(user)
    known = dataset.field2token_id[dataset.uid_field]
    if str(user) not in known:
        examples = ", ".join(list(known)[1:6])
        raise UnknownUserError(f"user '{user}' is not in dataset '{dataset.dataset_name}' (user tokens look like: "
                               f"{examples})")
    return known[str(user)]


class GenerativeRecommender(SequentialRecommender):
    """Base class: subclasses implement :meth:`generate_images` (and may rank with :meth:`full_sort_predict`)."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if getattr(dataset, "image_store", None) is None:
            raise ValueError(f"{type(self).__name__} draws item images: build its dataset with "
                             f"recbole_gen.data.create_dataset(config, images=True) (run_recbole does)")
        self.store = dataset.image_store
        self._dataset = dataset
        self.repeatable = config["repeatable"]

    # ---------------------------------------------------------------- artifacts, handed in before use
    # A generator that draws through an image tokenizer (a JanusVQVAE) exposes it here; the artifact step
    # (recbole_gen/trainer/artifacts.py) trains it on the catalogue when it is not pretrained (its architecture:
    # the VQ keys of ``tokenizer_settings``), then gives the model every item's tokens.
    image_tokenizer = None
    tokenizer_pretrained = False
    tokenizer_image_size = None
    tokenizer_settings = None

    def set_item_tokens(self, tokens):
        """The catalogue's image tokens ``[item_num, tokens per image]`` under ``image_tokenizer``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the contract
    def generate_images(self, interaction, num_samples=None, seed=None, exclude=None, **generation):
        """``num_samples`` images per row of ``interaction`` (reads ``item_id_list`` / ``item_length`` only);
        ``exclude [B, c]`` (0-padded): items a row's user already took and may not be shown again (``repeatable:
        False``), which a generator that plans items never plans."""
        raise NotImplementedError

    def full_sort_predict(self, interaction):
        raise NotARankerError(f"{type(self).__name__} ranks the catalogue by its generated images, which the "
                              f"evaluator embeds and searches; it has no scores of its own (RecBole's case_study "
                              f"helpers need them): use `recbole-gen recommend --model-file X --user U` "
                              f"(recbole_gen.recommend.recommend) for its images' nearest items")

    def predict(self, interaction):
        return self.full_sort_predict(interaction).gather(1, interaction[self.ITEM_ID].view(-1, 1)).squeeze(1)

    def forward(self, item_seq, item_seq_len):
        raise NotImplementedError(f"{type(self).__name__} has no user embedding; use calculate_loss or generate_images")

    # ---------------------------------------------------------------- public API
    def user_history(self, user):
        """Internal item ids the model's dataset holds for ``user`` (external token or internal id), in time order.

        RecBole's sequential augmentation keeps one row per target (``item_id`` = the target, ``item_id_list`` = the
        items before it), so a user's first interaction is in no row's ``item_id``: it is read from the item list of
        the user's earliest row, and every later item from the rows' targets."""
        dataset = self._dataset
        uid = internal_user(dataset, user)
        inter = dataset.inter_feat
        mine = np.flatnonzero(inter[dataset.uid_field].numpy() == uid)
        if dataset.time_field in inter.columns:
            mine = mine[np.argsort(inter[dataset.time_field].numpy()[mine], kind="stable")]
        items = inter[dataset.iid_field].numpy()[mine].tolist()
        if not len(mine) or self.ITEM_SEQ not in inter.columns:
            return items
        first = mine[0]
        before = inter[self.ITEM_SEQ][first, :int(inter[self.ITEM_SEQ_LEN][first])].tolist()
        return before + items

    def history_batch(self, histories):
        """Lists of internal item ids (oldest first; ``[]`` = no history) -> an ``Interaction`` as RecBole batches them."""
        width = max([1] + [len(h) for h in histories])
        seq = torch.zeros((len(histories), width), dtype=torch.long)
        for i, h in enumerate(histories):
            seq[i, :len(h)] = torch.as_tensor(h, dtype=torch.long)
        return Interaction({self.ITEM_SEQ: seq, self.ITEM_SEQ_LEN: torch.tensor([len(h) for h in histories])})

    @torch.no_grad()
    def generate(self, users=None, histories=None, num_samples=None, seed=None, out_dir=None, **generation):
        """Draw images for ``users`` (external tokens or internal ids: their history in this model's dataset) or
        for explicit ``histories`` (lists of internal item ids, oldest first; ``[]`` = no history); under
        ``repeatable: False`` nothing of the history is planned again. ``generation`` overrides sampling settings.
        With ``out_dir``, writes ``<row>_<sample>.png`` and ``manifest.json``."""
        if (users is None) == (histories is None):
            raise ValueError("give exactly one of users= or histories=")
        labels = list(users) if users is not None else [None] * len(histories)
        if users is not None:
            histories = [self.user_history(u) for u in users]
        was_training = self.training
        self.eval()
        try:
            batch = self.history_batch(histories).to(self.device)
            exclude = None if self.repeatable else batch[self.ITEM_SEQ]
            result = self.generate_images(batch, num_samples, seed, exclude=exclude, **generation)
        finally:
            self.train(was_training)
        dataset, texts = self._dataset, self.store.item_texts()
        for row, items in enumerate(result.histories):
            items = [int(i) for i in items]
            for sample in range(result.pixels.shape[1]):
                plan = int(result.plans[row, sample])
                result.manifest.append({
                    "row": row, "user": None if labels[row] is None else str(labels[row]), "sample": sample,
                    "history": items, "history_tokens": [str(t) for t in dataset.id2token(dataset.iid_field, items)] if items else [],
                    "history_texts": [texts[i] for i in items], "plan": plan, **self.describe_generation(seed, generation),
                })
        result.pixels = result.pixels.cpu()
        if out_dir is not None:
            write_pngs(result, out_dir)
        return result

    def describe_generation(self, seed, overrides):
        """The settings that made an image (for the manifest)."""
        return {"seed": seed, **overrides}


class CoreCheckpoint:
    """Checkpointing for a generator whose trainable parts live in ``self.core`` (GenLMM, GenDiff): RecBole's
    ``state_dict`` holds only what training changed (``core.saved_state_dict()``, under ``core.``), and
    ``other_parameter`` the frozen base's description under :attr:`base_key`, checked on load. Mix in before
    :class:`GenerativeRecommender`."""

    base_key = None  # e.g. "genlmm_base"

    def state_dict(self, *args, **kwargs):
        prefix = kwargs.get("prefix", "")
        return {prefix + "core." + k: v for k, v in self.core.saved_state_dict().items()}

    def expected_checkpoint_keys(self, given):
        """The ``state_dict`` keys a checkpoint of this configuration holds (``given``: the checkpoint's)."""
        return {"core." + k for k in self.core.state_dict() if k in self.core.saved_parameters}  # names only: no gather

    def checkpoint_settings(self):
        """The settings a mismatching checkpoint's error names (the likely cause)."""
        return ""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        given = set(state_dict)
        expected = self.expected_checkpoint_keys(given)
        if strict and expected != given:
            missing, unexpected = sorted(expected - given)[:5], sorted(given - expected)[:5]
            settings = self.checkpoint_settings()
            raise RuntimeError(f"{type(self).__name__} checkpoint does not match this configuration"
                               f"{f' ({settings})' if settings else ''}: missing {missing}, unexpected {unexpected}")
        inner = {k[len("core."):]: v for k, v in state_dict.items() if k.startswith("core.")}
        if sharding.is_sharded(self.core):  # dist_strategy: fsdp: every rank loads the full state into its shards
            return sharding.load_full_state_dict(self.core, inner)
        return self.core.load_state_dict(inner, strict=False, assign=assign)

    def other_parameter(self):
        return {self.base_key: self.core.base_info(), "artifacts": self.artifact_info}


def write_pngs(result, out_dir):
    """Write each image as ``<row>_<sample>.png`` and the manifest as ``manifest.json`` (atomically)."""
    from PIL import Image

    out = Path(out_dir)  # atomic_write creates it
    for entry in result.manifest:
        image = result.pixels[entry["row"], entry["sample"]].permute(1, 2, 0).mul(255).round().byte().numpy()
        path = out / f"{entry['row']:04d}_{entry['sample']:02d}.png"
        atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))
        entry["png"] = path.name
    atomic_write_bytes(out / "manifest.json", json.dumps(result.manifest, indent=1).encode())
    return out

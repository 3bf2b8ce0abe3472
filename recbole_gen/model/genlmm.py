"""GenLMM: a RecBole sequential model that draws the next item's image (docs/genlmm.md).

``run_recbole --model=GenLMM --dataset=emoji-seq`` trains it by SFT (cross-entropy on the next item's
image tokens) through :class:`recbole_gen.trainer.GenLMMTrainer`; ``full_sort_predict`` generates
``num_samples`` images per user, embeds them with the evaluation encoder and scores the catalogue, so
Hit / NDCG / MRR mean what they mean for SASRec. The model itself lives in
:mod:`recbole_gen.model.core`; this file is the RecBole wiring and the public ``generate`` API.

Only ``item_id_list`` / ``item_length`` are read at evaluation (never the target item's features);
``calculate_loss`` reads the target item id to fetch its image tokens, in training only.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_gen.files import atomic_write, atomic_write_bytes
from recbole_gen.model.core import RL_ADAPTER, GenLMMCore, count_parameters
from recbole_gen.utils import config_value


def _cache_dir(config):
    folder = config_value(config, "cache_dir")
    return Path(folder) if folder else Path(config["data_path"]) / ".cache"


class UnknownUserError(ValueError):
    """A user token that the model's dataset does not hold."""


@dataclass
class Generation:
    """What :meth:`GenLMM.generate` returns: pixels ``[U, n, 3, S, S]`` in [0,1], tokens, and one manifest
    row per image (user, history ids and tokens, sample index, seed, PNG path if written)."""

    pixels: torch.Tensor
    tokens: torch.Tensor
    manifest: list = field(default_factory=list)


class GenLMM(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        from recbole_gen.data.images import ItemImageStore

        self.config = config
        self.store = ItemImageStore.from_dataset(config, dataset)
        self.core = GenLMMCore(config, self.store.pixels(), self.store.item_texts(), cache_dir=_cache_dir(config),
                               token_cache=self.store.cached)
        if str(config_value(config, "stage", "")).lower() == "rl" and self.core.settings["finetune"] == "lora":
            self.core.add_rl_adapter(seed=int(config_value(config, "rl_seed", 0)))
        s = self.core.settings
        self.num_samples = int(config_value(config, "num_samples", 1))
        self.generation_kwargs = {
            "guidance_scale": float(config_value(config, "guidance_scale", 0.0)),
            "temperature": float(config_value(config, "temperature", 0.7)),
            "top_k": int(config_value(config, "top_k", 0)), "top_p": float(config_value(config, "top_p", 1.0)),
            "use_cache": bool(config_value(config, "use_kv_cache", True)),
        }
        self.generation_seed = int(config_value(config, "generation_seed", 0))
        self.generation_batch_size = int(config_value(config, "generation_batch_size", 64))
        self.cond_dropout = float(s["cond_dropout"])
        self._dataset = dataset
        self._catalogue = None
        # read by the evaluation glue (recbole_gen.trainer.evaluation) after each full_sort_predict
        self.last_sample_embeddings = None
        self.last_sample_pixels = None
        self.last_sample_tokens = None

    def __repr__(self):
        total, trainable = count_parameters(self.core), count_parameters(self.core, True)
        mode = self.core.settings["history_mode"]
        return (f"GenLMM(backbone={'pretrained ' + str(self.core.settings['lmm_path']) if self.core.backbone.is_pretrained else 'tiny random Janus'}, "
                f"finetune={self.core.settings['finetune']}, history_mode={mode}, image tokens={self.core.num_image_tokens}, "
                f"parameters={total:,}, trainable={trainable:,})")

    # ------------------------------------------------------------ training
    def forward(self, item_seq, item_seq_len):
        raise NotImplementedError("GenLMM has no user embedding; use calculate_loss, generate or full_sort_predict")

    def calculate_loss(self, interaction):
        item_seq, item_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        drop = None
        if self.training and self.cond_dropout > 0:
            drop = torch.rand(len(item_seq)) < self.cond_dropout
        histories = self.core.histories(item_seq, item_len, drop)
        return self.core.loss(histories, interaction[self.POS_ITEM_ID])

    # ---------------------------------------------------------- evaluation
    def _generate_for(self, item_seq, item_len, num_samples=None, seed=None, **overrides):
        histories = self.core.histories(item_seq, item_len)
        kwargs = {**self.generation_kwargs, **overrides}
        n = int(num_samples or self.num_samples)
        seed = self.generation_seed if seed is None else seed
        tokens = []
        for start in range(0, len(histories), self.generation_batch_size):
            tokens.append(self.core.generate_tokens(histories[start:start + self.generation_batch_size], num_samples=n,
                                                    seed=seed, **kwargs))
        tokens = torch.cat(tokens)
        return histories, tokens, self.core.decode(tokens)

    def catalogue(self):
        """The evaluation catalogue (``eval_encoder`` embeddings + FAISS index) of this dataset, built once."""
        if self._catalogue is None:
            from recbole_gen.evaluator.catalogue import ImageCatalogue

            self._catalogue = ImageCatalogue.from_config(self.config, self._dataset, store=self.store)
        return self._catalogue

    @torch.no_grad()
    def full_sort_predict(self, interaction):
        """Generate ``num_samples`` images per user and score every catalogue item by its best (or mean,
        ``eval_score_reduce``) cosine to them under the evaluation encoder. Leaves the samples'
        embeddings in ``self.last_sample_embeddings`` [B, n, D] (pixels in ``last_sample_pixels``)."""
        from recbole_gen.evaluator.scoring import catalogue_scores

        _, tokens, pixels = self._generate_for(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        catalogue = self.catalogue()
        batch, n = pixels.shape[:2]
        emb = catalogue.encode(pixels.flatten(0, 1)).view(batch, n, -1)
        self.last_sample_embeddings, self.last_sample_pixels, self.last_sample_tokens = emb, pixels, tokens
        reduce = self.config["eval_score_reduce"] or "max"
        return catalogue_scores(emb, catalogue, reduce=reduce).to(interaction[self.ITEM_SEQ].device)

    def predict(self, interaction):
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].view(-1, 1)).squeeze(1)

    # ------------------------------------------------------ checkpointing
    def state_dict(self, *args, **kwargs):
        """Only what training changed: LoRA adapters + ``lora_modules_to_save`` (``finetune: lora``) or the
        trained LMM parts (``full``), plus the history projection. The frozen base is rebuilt from
        ``lmm_path`` (or, for the tiny model, from ``base_seed``) and the VQ from the dataset cache."""
        prefix = kwargs.get("prefix", "")
        return {prefix + "core." + k: v for k, v in self.core.saved_state_dict().items()}

    def load_state_dict(self, state_dict, strict=True, assign=False):
        expected = {"core." + k for k in self.core.saved_state_dict()}
        given = set(state_dict)
        if self.core.has_rl_adapter and not any(f".{RL_ADAPTER}." in k for k in given):
            expected = {k for k in expected if f".{RL_ADAPTER}." not in k}  # an SFT checkpoint under a fresh RL adapter
        if strict and (expected - given or given - expected):
            missing, unexpected = sorted(expected - given)[:5], sorted(given - expected)[:5]
            raise RuntimeError(f"GenLMM checkpoint does not match this configuration (finetune="
                               f"{self.core.settings['finetune']}): missing {missing}, unexpected {unexpected}")
        inner = {k[len("core."):]: v for k, v in state_dict.items() if k.startswith("core.")}
        return self.core.load_state_dict(inner, strict=False, assign=assign)

    def other_parameter(self):
        return {"genlmm_base": self.core.base_info()}

    def load_other_parameter(self, para):
        if not para or "genlmm_base" not in para:
            return
        saved, now = para["genlmm_base"], self.core.base_info()
        for key in ("lmm_path", "base_seed", "finetune"):
            if saved.get(key) != now.get(key):
                raise RuntimeError(f"checkpoint was trained with {key}={saved.get(key)!r}, this model has {now.get(key)!r}")
        if (saved.get("vq") or {}).get("key") != (now.get("vq") or {}).get("key"):
            raise RuntimeError("checkpoint was trained with a different image tokenizer (VQ settings or catalogue changed)")
        if (saved.get("pretrain") or {}).get("key") != (now.get("pretrain") or {}).get("key"):
            raise RuntimeError("checkpoint was trained after a different catalogue pre-training (pretrain_* settings, "
                               "model settings or catalogue changed)")

    # --------------------------------------------------------- public API
    def user_history(self, user):
        """Internal item ids the model's dataset holds for ``user`` (external token or internal id), in order."""
        dataset = self._dataset
        if isinstance(user, (int, np.integer)):
            uid = int(user)
        else:
            known = dataset.field2token_id[dataset.uid_field]
            if str(user) not in known:
                examples = ", ".join(list(known)[1:6])
                raise UnknownUserError(f"user '{user}' is not in dataset '{dataset.dataset_name}' (user tokens look like: {examples})")
            uid = known[str(user)]
        inter = dataset.inter_feat
        users = inter[dataset.uid_field].numpy()
        items = inter[dataset.iid_field].numpy()
        if dataset.time_field in inter.columns:
            order = np.argsort(inter[dataset.time_field].numpy()[users == uid], kind="stable")
        else:
            order = np.arange((users == uid).sum())
        return items[users == uid][order].tolist()

    @torch.no_grad()
    def generate(self, users=None, histories=None, num_samples=None, seed=None, out_dir=None, **generation):
        """Draw images for ``users`` (external tokens or internal ids: their history in this model's dataset)
        or for explicit ``histories`` (lists of internal item ids, oldest first; ``[]`` = no history).

        ``generation`` overrides ``guidance_scale``, ``temperature``, ``top_k``, ``top_p``, ``use_cache``.
        With ``out_dir``, writes ``<out_dir>/<row>_<sample>.png`` and ``manifest.json``.
        """
        if (users is None) == (histories is None):
            raise ValueError("give exactly one of users= or histories=")
        labels = list(users) if users is not None else [None] * len(histories)
        if users is not None:
            histories = [self.user_history(u) for u in users]
        width = max([1] + [len(h) for h in histories])
        seq = torch.zeros((len(histories), width), dtype=torch.long)
        for i, h in enumerate(histories):
            if h:
                seq[i, : len(h)] = torch.as_tensor(h)
        lengths = torch.tensor([len(h) for h in histories])
        was_training = self.training
        self.eval()
        try:
            used, tokens, pixels = self._generate_for(seq.to(self.core.item_tokens.device), lengths, num_samples, seed, **generation)
        finally:
            self.train(was_training)
        seed = self.generation_seed if seed is None else seed
        texts = self.store.item_texts()
        manifest = []
        for row, items in enumerate(used):
            for s in range(tokens.shape[1]):
                manifest.append({"row": row, "user": None if labels[row] is None else str(labels[row]),
                                 "history": [int(i) for i in items],
                                 "history_tokens": [str(t) for t in self._dataset.id2token(self._dataset.iid_field, items)] if items else [],
                                 "history_texts": [texts[i] for i in items], "sample": s, "seed": int(seed),
                                 **{k: v for k, v in {**self.generation_kwargs, **generation}.items()}})
        result = Generation(pixels=pixels.cpu(), tokens=tokens.cpu(), manifest=manifest)
        if out_dir is not None:
            write_pngs(result, out_dir)
        return result


def write_pngs(result, out_dir):
    """Write each image as ``<row>_<sample>.png`` and the manifest as ``manifest.json`` (atomically)."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for entry in result.manifest:
        image = result.pixels[entry["row"], entry["sample"]].permute(1, 2, 0).mul(255).round().byte().numpy()
        path = out / f"{entry['row']:04d}_{entry['sample']:02d}.png"
        atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))
        entry["png"] = path.name
    atomic_write_bytes(out / "manifest.json", json.dumps(result.manifest, indent=1).encode())
    return out


def generate_command(model_file, users=None, num_samples=4, out_dir="generated", seed=None, **generation):
    """``recbole-gen generate``: load a saved GenLMM checkpoint and draw images for users."""
    from recbole_gen.quick_start import load_data_and_model

    _, model, *_ = load_data_and_model(model_file)
    result = model.generate(users=users, num_samples=num_samples, seed=seed, out_dir=out_dir, **generation)
    return result

"""The any-to-any backbone: transformers' ``JanusForConditionalGeneration``, tiny or real.

``lmm_path: ~`` builds a tiny random-initialised Janus from the ``lmm_*`` / ``vq_*`` config keys (all
sizes cast to int: transformers' config classes are strict) with a byte-level tokenizer, since no text
tokenizer is available offline. ``lmm_path: <folder>`` loads a Hugging Face-format Janus / Janus-Pro
checkpoint (``from_pretrained``), its tokenizer and its image processor's normalisation from that folder.
Everything downstream uses only the APIs both share: ``model.model.language_model`` (a Llama decoder),
``get_input_embeddings``, ``model.model.get_image_features``, ``prepare_embeddings_for_image_generation``,
``model.model.generation_head``, ``model.lm_head`` and ``model.model.vqmodel``.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import JanusConfig, JanusForConditionalGeneration, JanusVisionConfig, LlamaConfig

from recbole_gen.model.vq import build_vq_config

BYTE_TOKENIZER_FILE = "genlmm_byte_tokenizer.json"
#: Janus's image normalisation (every Janus / Janus-Pro image processor: mean 0.5, std 0.5, pixels to [-1, 1])
JANUS_NORMALISATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


class ByteTokenizer:
    """UTF-8 bytes shifted past a few special tokens: a text tokenizer that needs no files (and no chat layout)."""

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<begin_of_image>", "<end_of_image>", "<image_placeholder>", "<sep>", "<unk>")

    def __init__(self):
        self.special = {name: i for i, name in enumerate(self.SPECIALS)}
        self.vocab_size = len(self.SPECIALS) + 256
        self.user_turn = ("", "")

    def encode(self, text):
        return [len(self.SPECIALS) + b for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - len(self.SPECIALS) for i in ids if i >= len(self.SPECIALS)).decode("utf-8", errors="replace")

    def save(self, folder):
        (Path(folder) / BYTE_TOKENIZER_FILE).write_text(json.dumps({"specials": list(self.SPECIALS)}))


class HFTokenizer:
    """A checkpoint's own tokenizer: Janus's image tokens (``<begin_of_image>``, ``<end_of_image>``,
    ``<image_placeholder>``) and BOS / EOS / pad, and ``user_turn``: the text before and after a user message in its
    chat template with the assistant's turn opened (Janus-Pro: ``<|User|>: `` ... ``\n\n<|Assistant|>:``), the layout
    the checkpoint was trained to draw after."""

    IMAGE_TOKENS = ("<begin_of_image>", "<end_of_image>", "<image_placeholder>")
    MESSAGE = "\x00message\x00"  # stands for the prompt while the chat template is rendered

    def __init__(self, folder):
        from transformers import AutoTokenizer

        self.tokenizer = tok = AutoTokenizer.from_pretrained(folder)
        vocabulary = tok.get_vocab()
        missing = [token for token in self.IMAGE_TOKENS if token not in vocabulary]
        if missing:
            raise ValueError(f"the tokenizer in lmm_path '{folder}' has no {', '.join(missing)}: it is not a Janus / "
                             f"Janus-Pro tokenizer (its tokenizer.json must hold Janus's image tokens)")
        names = {"<pad>": tok.pad_token or tok.eos_token, "<bos>": tok.bos_token, "<eos>": tok.eos_token,
                 **{token: token for token in self.IMAGE_TOKENS}}
        self.special = {name: tok.convert_tokens_to_ids(token) for name, token in names.items() if token is not None}
        self.special.setdefault("<pad>", 0)
        self.vocab_size = len(tok)
        self.user_turn = self._user_turn()

    def _user_turn(self):
        if not self.tokenizer.chat_template:
            return "", ""
        message = [{"role": "user", "content": [{"type": "text", "text": self.MESSAGE}]}]
        before, _, after = self.tokenizer.apply_chat_template(message, add_generation_prompt=True,
                                                              tokenize=False).partition(self.MESSAGE)
        return before, after

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids):
        return self.tokenizer.decode(ids)


@dataclass
class Backbone:
    model: JanusForConditionalGeneration
    tokenizer: object
    image_size: int
    grid: int
    codebook_size: int
    is_pretrained: bool
    image_mean: tuple
    image_std: tuple

    def normalise(self, pixels):
        """Pixels ``[N, 3, S, S]`` in [0, 1] -> the vision tower's input, normalised as its image processor does."""
        mean, std = (pixels.new_tensor(values).view(-1, 1, 1) for values in (self.image_mean, self.image_std))
        return (pixels - mean) / std


def tiny_janus_config(settings):
    """A JanusConfig from the ``lmm_*`` keys; the VQ part matches the catalogue-trained tokenizer."""
    hidden, size, grid = settings.lmm_hidden_size, settings.lmm_image_size, settings.vq_grid
    tokenizer = ByteTokenizer()
    text = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden, intermediate_size=settings.lmm_intermediate_size,
        num_hidden_layers=settings.lmm_num_layers, num_attention_heads=settings.lmm_num_heads,
        num_key_value_heads=settings.lmm_num_heads, max_position_embeddings=settings.lmm_max_position_embeddings,
        pad_token_id=tokenizer.special["<pad>"], bos_token_id=tokenizer.special["<bos>"], eos_token_id=tokenizer.special["<eos>"],
        tie_word_embeddings=False,
    )
    vision = JanusVisionConfig(
        hidden_size=settings.lmm_vision_hidden_size, num_hidden_layers=settings.lmm_vision_layers,
        num_attention_heads=settings.lmm_vision_heads, image_size=size, patch_size=size // grid,
        projection_dim=hidden, num_image_tokens=grid * grid, mlp_ratio=2.0,
    )
    vq = build_vq_config(settings, image_token_embed_dim=hidden, projection_dim=hidden)
    return JanusConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), vq_config=vq.to_dict(),
                       image_token_id=tokenizer.special["<image_placeholder>"], tie_word_embeddings=False)


def image_normalisation(folder):
    """Per-channel mean and std of the checkpoint's image processor: what its vision tower was trained on."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(folder)
    except OSError as error:
        raise FileNotFoundError(f"lmm_path '{folder}' has no image processor (preprocessor_config.json or "
                                f"processor_config.json), so the vision tower's input normalisation is unknown; a Hugging "
                                f"Face Janus / Janus-Pro snapshot has one") from error
    if not processor.do_normalize:
        return (0.0,) * 3, (1.0,) * 3
    return tuple(processor.image_mean), tuple(processor.image_std)


def build_backbone(settings):
    """The Janus model and its tokenizer, untrained (a tiny model's image tokenizer is trained as an artifact).
    A tiny model is initialised under its own RNG (``base_seed``), so rebuilding it gives the same weights
    whatever ran before (LoRA checkpoints store only the adapter)."""
    dtype = DTYPES[settings.dtype.lower()]
    path = settings.lmm_path
    if path:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"lmm_path '{folder}' holds no Hugging Face checkpoint (config.json missing). Point lmm_path at a local "
                f"Janus / Janus-Pro folder in Hugging Face format (e.g. a snapshot of deepseek-community/Janus-Pro-1B); "
                f"recbole-gen never downloads weights."
            )
        model = JanusForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        tokenizer = ByteTokenizer() if (folder / BYTE_TOKENIZER_FILE).is_file() else HFTokenizer(folder)
        mean, std = image_normalisation(folder)
        pretrained = True
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.base_seed)
            model = JanusForConditionalGeneration(tiny_janus_config(settings))
        model = model.to(dtype)
        tokenizer = ByteTokenizer()
        mean, std = JANUS_NORMALISATION
        pretrained = False
    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size
    return Backbone(model=model, tokenizer=tokenizer, image_size=int(vision.image_size), grid=int(grid),
                    codebook_size=int(model.config.vq_config.num_embeddings), is_pretrained=pretrained, image_mean=mean,
                    image_std=std)


def save_tiny_checkpoint(backbone, folder):
    """``save_pretrained`` plus the byte tokenizer marker and Janus's image processor: a folder ``lmm_path`` can load."""
    from transformers import JanusImageProcessor

    backbone.model.save_pretrained(folder)
    size, (mean, std) = backbone.image_size, JANUS_NORMALISATION
    JanusImageProcessor(size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std)).save_pretrained(folder)
    if isinstance(backbone.tokenizer, ByteTokenizer):
        backbone.tokenizer.save(folder)
    return Path(folder)

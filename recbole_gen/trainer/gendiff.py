"""GenDiffTrainer: GenDiff's denoising loss in the supervised loop GenLMM's SFT uses (recbole_gen/trainer/genlmm.py):
gradient accumulation, clipping, warm-up and schedule, the wall-clock budget ``max_train_minutes``, validation,
early stopping and checkpoints. Only the loss differs, and the model computes it."""
from recbole_gen.trainer.genlmm import SFTTrainer


class GenDiffTrainer(SFTTrainer):
    """Found by name for ``run_recbole --model=GenDiff`` (recbole_gen.utils.get_trainer); one training row is one
    target image."""

    def _throughput_unit(self):
        return "target images", 1

"""The duties of a trainer that runs on several processes (``run_recbole --nproc=2``, torchrun), on RecBole's own
engine, torch.distributed. Every helper is a no-op in a single-process run (``config["single_spec"]``).

* :class:`GradientSync`: a loss computed outside the DDP wrapper's ``forward`` (RecBole's ``calculate_loss``,
  GenLMM's RL objectives) still has its gradients averaged over the ranks: RecBole's ``set_reduce_hook`` /
  ``sync_grad_loss`` per backward, and no all-reduce on gradient-accumulation micro-steps (DDP's ``no_sync``).
* :func:`any_rank` / :func:`mean_over_ranks`: decisions every rank must take together (a wall-clock budget that
  one rank reaches first would leave the others waiting forever in a collective) and logged scalars.
* :class:`DistributedMixin`: one checkpoint name (rank 0's clock decides it), written by rank 0 before any rank
  reads it; with ``dist_strategy: fsdp`` the file holds the full (gathered) model and optimizer states.
"""
import contextlib
import os

import torch
import torch.distributed as dist

from recbole_gen.files import storage_errors
from recbole_gen.model import sharding
from recbole_gen.ranks import barrier, broadcast_from_rank0


def is_distributed(config):
    return not config["single_spec"]


def rank_of(config):
    """This process's rank among all processes (``local_rank + offset``, as RecBole's Config computes it)."""
    return 0 if config["single_spec"] else int(config["local_rank"]) + int(config["offset"])


def world_size(config):
    return 1 if config["single_spec"] else int(config["world_size"])


def any_rank(config, flag):
    """True on every rank when ``flag`` is true on at least one."""
    if not is_distributed(config):
        return bool(flag)
    value = torch.tensor([int(bool(flag))])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(config, values):
    """``{name: float}`` averaged over the ranks (the same dict on every rank)."""
    if not is_distributed(config) or not values:
        return dict(values)
    keys = sorted(values)
    summed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(summed)
    return {k: v / world_size(config) for k, v in zip(keys, summed.tolist())}


class GradientSync:
    """DDP's all-reduce for losses computed outside the wrapper's ``forward``.

    ``prepare(loss, sync)`` before each ``backward``: a pass through the DDP wrapper with an identity ``forward``
    arms its reducer for the coming backward (RecBole's ``set_reduce_hook``), under ``no_sync`` when ``sync`` is
    False (an accumulation micro-step: gradients accumulate locally and are averaged at the step); a zero-weighted
    sum of every trainable parameter joins the loss, so that every parameter takes part in each backward as DDP
    expects (RecBole's ``sync_grad_loss``, here over trainable parameters only: frozen ones have no gradient)."""

    def __init__(self, distributed_model):
        self.ddp = distributed_model
        self.params = [p for p in distributed_model.module.parameters() if p.requires_grad]

    def prepare(self, loss, sync=True):
        module = self.ddp.module
        module.forward = lambda x: x
        try:
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                self.ddp(torch.zeros(1))
        finally:
            del module.forward  # the class's forward again
        return loss + sum(p.sum() * 0 for p in self.params)


class ShardedGradientSync:
    """:class:`GradientSync` under FSDP2 (``dist_strategy: fsdp``): ``fully_shard``'s own hooks reduce-scatter the
    gradients of a loss computed through the root's ``forward``; on accumulation micro-steps they are told not to."""

    def __init__(self, model):
        self.model = model

    def prepare(self, loss, sync=True):
        sharding.set_gradient_sync(self.model, sync)
        return loss


def gradient_sync(trainer):
    """The gradient averaging of ``trainer``'s model: FSDP2's for a sharded model, DDP's for RecBole's
    ``distributed_model``; None in one process."""
    if not is_distributed(trainer.config):
        return None
    if sharding.is_sharded(trainer.model):
        return ShardedGradientSync(trainer.model)
    return GradientSync(trainer.distributed_model)


@contextlib.contextmanager
def full_state_dicts(model, optimizer):
    """A sharded model (``dist_strategy: fsdp``): every rank joins gathering the full model and optimizer states (they
    are collectives), and while open ``model.state_dict()`` / ``optimizer.state_dict()`` return them, so RecBole's
    save, which runs on rank 0 alone, writes one full checkpoint in its own format. A no-op otherwise."""
    if not sharding.is_sharded(model):
        yield
        return
    model_state, optimizer_state = model.state_dict(), sharding.full_optimizer_state_dict(model, optimizer)
    model.state_dict = lambda *args, **kwargs: model_state
    optimizer.state_dict = lambda: optimizer_state
    try:
        yield
    finally:
        del model.state_dict, optimizer.state_dict  # the classes' methods again


class DistributedMixin:
    """Mix in before any RecBole trainer class (``run_recbole`` does, through ``build_trainer``): under
    ``--nproc > 1`` every rank uses rank 0's checkpoint name (RecBole names it from each rank's own clock), and a
    barrier after each save keeps any rank from reading a checkpoint before rank 0 has written it. The checkpoint
    folder exists before RecBole's check-then-create, which two ranks can race."""

    def __init__(self, config, model):
        with storage_errors(config["checkpoint_dir"]):
            os.makedirs(config["checkpoint_dir"], exist_ok=True)
        super().__init__(config, model)
        self.saved_model_file = broadcast_from_rank0(self.saved_model_file)

    def _save_checkpoint(self, epoch, *args, **kwargs):
        # RecBole's decision-tree trainers (LightGBM, XGBoost) hold a booster, not a torch model, have no optimizer
        # and save without ``verbose``
        optimizer = getattr(self, "optimizer", None)
        with contextlib.nullcontext() if optimizer is None else full_state_dicts(self.model, optimizer):
            super()._save_checkpoint(epoch, *args, **kwargs)
        barrier()

    def resume_checkpoint(self, resume_file):
        """RecBole's resume; a sharded model's optimizer takes the checkpoint's full state and keeps its shard, and
        an unsharded one refuses a sharded run's (keyed by parameter name) with a message instead of torch's."""
        optimizer, sharded = self.optimizer, sharding.is_sharded(self.model)

        def load(state):
            del optimizer.load_state_dict  # torch's own again (the sharded load calls it with this rank's shard)
            if sharded:
                sharding.load_full_optimizer_state_dict(self.model, optimizer, state)
            elif sharding.is_full_optimizer_state(state):
                raise ValueError(f"{resume_file} was saved by a sharded run (dist_strategy: fsdp): resume it with "
                                 f"--nproc>1 --dist_strategy=fsdp, or start a new run from its weights with init_from")
            else:
                optimizer.load_state_dict(state)

        optimizer.load_state_dict = load
        try:
            return super().resume_checkpoint(resume_file)
        finally:
            optimizer.__dict__.pop("load_state_dict", None)

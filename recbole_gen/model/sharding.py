"""FSDP2 (``dist_strategy: fsdp``): a model's parameters, gradients and optimizer states split over the ranks, so
full fine-tuning of a checkpoint that does not fit one GPU (Janus-Pro-7B) runs on several.

torch's ``fully_shard`` does the work: each decoder layer is one unit (its parameters are all-gathered just before
the layer runs and freed after it), the rest of the module is the root unit (gathered around the root's
``forward``, which is why :class:`~recbole_gen.model.core.GenLMMCore` runs everything through its ``forward``).
Master weights stay float32 and shard; a bf16 / fp16 ``dtype`` becomes the compute dtype (gathered parameters in
it, gradients reduced in float32), torch's ``MixedPrecisionPolicy``. Checkpoints hold the full (unsharded) state in
RecBole's format, so a sharded run's file loads in a one-process run and back.

Only torch is imported here: ``benchmarks/scale/gpu.py`` loads this file on a GPU machine that has no RecBole.
"""
import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets the whole state on the CPU


def shard(module, layers, dtype=torch.float32):
    """Shard ``module`` in place: every module of ``layers`` its own unit, the rest the root. ``dtype``: the compute
    dtype (bf16 / fp16: the floating parameters become float32 master weights, gathered in ``dtype``)."""
    policy = MixedPrecisionPolicy()
    if dtype != torch.float32:
        module.float()
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module


def is_sharded(module):
    """True when ``module`` or one of its submodules went through :func:`shard`."""
    return any(isinstance(m, FSDPModule) for m in module.modules())


def sharded_roots(module):
    """The outermost sharded modules inside ``module`` (the roots :func:`shard` made)."""
    roots, inside = [], set()
    for m in module.modules():
        if isinstance(m, FSDPModule) and id(m) not in inside:
            roots.append(m)
            inside.update(id(sub) for sub in m.modules())
    return roots


def set_gradient_sync(module, sync):
    """Reduce-scatter the gradients in the coming backward (``sync``) or keep accumulating them locally (the
    micro-steps of gradient accumulation: FSDP2's counterpart of DDP's ``no_sync``)."""
    for root in sharded_roots(module):
        root.set_requires_gradient_sync(sync)


def full_state_dict(module):
    """The whole, unsharded state of a sharded ``module`` on rank 0 (CPU tensors; ``{}`` on the other ranks).
    A collective: every rank calls it."""
    return get_model_state_dict(module, options=FULL)


def load_full_state_dict(module, state):
    """Load a full state (every rank holds it, e.g. read from one checkpoint file) into a sharded ``module``;
    keys it lacks keep their values. A collective: every rank calls it."""
    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=False))


def full_optimizer_state_dict(module, optimizer):
    """The optimizer's whole state on rank 0 (``{}`` elsewhere), keyed by parameter name. A collective."""
    return get_optimizer_state_dict(module, optimizer, options=FULL)


def is_full_optimizer_state(state):
    """Whether an optimizer state came from :func:`full_optimizer_state_dict` (keyed by parameter name, not index)."""
    return any(isinstance(key, str) for key in state.get("state", {}))


def load_full_optimizer_state_dict(module, optimizer, state):
    """Load a full optimizer state from :func:`full_optimizer_state_dict` (every rank holds it); a trainable
    parameter that never had a gradient (e.g. a head no loss used) has no state there and starts fresh. A collective."""
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        for key in saved.keys() - group.keys():  # e.g. a schedule's initial_lr: torch's own load_state_dict takes them
            group[key] = saved[key]
    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))

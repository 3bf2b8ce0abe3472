"""RecBole 1.2.1 wraps every model as ``DistributedDataParallel(model, device_ids=[local_rank])``
(``recbole/trainer/trainer.py`` line 62), which torch refuses for a model on the CPU: its multi-process path only
ran on GPUs. On the CPU (the gloo backend, which :meth:`recbole_gen.config.Config._init_device` picks there) the
model is wrapped without device ids, as torch documents for CPU modules; on a GPU the call is RecBole's own. A model already sharded by FSDP2 (``dist_strategy: fsdp``, which
the trainer applies before RecBole's constructor runs) is not wrapped again: it averages its own gradients.
"""
from torch.nn.parallel import DistributedDataParallel


def distributed_data_parallel(module, device_ids=None, **kwargs):
    """RecBole's DDP wrapper, given device ids only where the module lives on a GPU; a sharded module as it is."""
    from recbole_gen.model.sharding import is_sharded  # torch-only; imported when RecBole builds a trainer

    if is_sharded(module):
        return module
    on_cpu = all(p.device.type == "cpu" for p in module.parameters())
    return DistributedDataParallel(module, device_ids=None if on_cpu else device_ids, **kwargs)


def patch_ddp_cpu():
    import recbole.trainer.trainer as recbole_trainer

    recbole_trainer.DistributedDataParallel = distributed_data_parallel

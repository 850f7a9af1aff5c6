"""FSDP for students that do not fit one GPU (``train.strategy: fsdp``): PyTorch FSDP2 (``fully_shard``)
of every transformer block of the student and of the objective's remaining parameters, full state
dicts gathered for checkpoints and for rank 0's evaluation replica. Pure torch (``torch.distributed``;
the process group is Ray Train's), no Ray. Works on CUDA (NCCL) and on CPU (gloo), where it is tested.

Why a replica: with FSDP every forward pass is collective, but a trial evaluates on rank 0 alone. Rank
0 keeps an unsharded copy of the objective (inference only: the fp32 weights, no gradients or optimizer
state — a quarter of what training one full copy needs) and loads the gathered weights into it at
each report; the other ranks wait at the gather.

A teacher too large for one copy per GPU (``teacher.shard``) is sharded too (``shard_frozen``); its part
of the evaluation is then computed by every rank together, once, before the first report
(``CausalEvaluation.teacher_part``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from raykd.models.sharding import is_sharded  # noqa: F401 (part of this module's interface)


def shard(method: nn.Module, blocks: nn.ModuleList) -> nn.Module:
    """``method`` sharded in place over the default process group: each of ``blocks`` (the student's
    transformer blocks) one FSDP unit, the rest (embeddings, head, projections) the root unit.
    Returns ``method`` (its class is now an FSDP module)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks:
        fully_shard(block)
    fully_shard(method)
    return method


def shard_frozen(model: nn.Module, blocks: nn.ModuleList) -> nn.Module:
    """A frozen, inference-only model (the teacher under ``teacher.shard``) sharded in place over the
    default process group: each of ``blocks`` one FSDP unit, the rest the root unit, parameters moved
    to this rank's device unit by unit (on CUDA a rank never holds more than its shards plus one
    unit). Every forward pass is then a collective: all ranks run it the same number of times.
    Returns ``model``."""
    from torch.distributed.fsdp import fully_shard

    model.requires_grad_(False)
    for block in blocks:
        fully_shard(block, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=True)
    return model


def shard_frozen_from_rank0(skeleton: nn.Module, full: nn.Module | None, blocks: nn.ModuleList,
                            device: torch.device) -> nn.Module:
    """A frozen model sharded over the default process group without any rank but 0 ever holding its
    weights: every rank shards ``skeleton`` (the model on the meta device, in the dtype wanted) and
    allocates its shards on ``device``; rank 0's ``full`` model (None elsewhere; on CPU) is then
    broadcast tensor by tensor, each rank keeping its shard, and its buffers (rotary frequencies and
    other non-persistent ones included) copied to every rank. A collective. Returns ``skeleton``."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    rank0 = dist.get_rank() == 0
    if rank0 == (full is None):
        raise ValueError("shard_frozen_from_rank0: rank 0 passes the full model, every other rank None")
    shard_frozen(skeleton, blocks)
    skeleton.to_empty(device=device)
    set_model_state_dict(skeleton, full.state_dict() if rank0 else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    source = dict(full.named_buffers()) if rank0 else {}
    with torch.no_grad():
        for name, buf in skeleton.named_buffers():
            if rank0:
                buf.copy_(source[name])
            dist.broadcast(buf, src=0)
    return skeleton


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """FSDP's reduce-scatter of gradients on (the last micro-step of an accumulation) or off."""
    model.set_requires_gradient_sync(enabled)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """(model state dict, optimizer state dict) unsharded on CPU on rank 0 ({} elsewhere): a collective,
    every rank calls it."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return model_sd, optim_sd


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict) -> None:
    """Load unsharded state dicts (every rank holds them, e.g. read from a checkpoint) into the
    sharded model and its optimizer: a collective, every rank calls it."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=opts)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)

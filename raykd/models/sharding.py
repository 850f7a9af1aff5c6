"""Whether a model is sharded (FSDP2): the one test the metrics, the evaluation and the training engine share."""

from __future__ import annotations

import torch.nn as nn


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by ``raykd.train.parallel.shard`` (FSDP2's ``fully_shard``)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)

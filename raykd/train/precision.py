"""The device / precision policy, in one place (README, *Scale out*): CUDA → fp16 autocast with a
GradScaler for encoders, bf16 autocast (no scaler) for causal LMs (either on request); CPU → fp32
(CPU autocast is ~15× slower here)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from raykd.models.families.spec import DEFAULT, family_spec


@dataclass(frozen=True)
class Precision:
    """How a step runs: autocast dtype (None = full fp32) and whether a GradScaler is needed."""

    device_type: str
    dtype: torch.dtype | None
    scaler: bool

    def autocast(self):
        """Context manager for the forward pass."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler (enabled only for fp16 on CUDA)."""
        return torch.amp.GradScaler(self.device_type if self.device_type == "cuda" else "cpu", enabled=self.scaler)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]


def precision_policy(device: torch.device, requested: str = "auto", family: str = DEFAULT) -> Precision:
    """The precision for ``device``: ``auto`` → on CUDA fp16 + scaler for a ``masked_lm`` family, bf16
    for ``causal_lm`` (the dtype decoder LMs are pretrained in; fp16 overflows their activations), fp32
    on CPU; ``fp16``/``bf16`` on CPU fall back to fp32 (autocast there is far slower than fp32)."""
    if requested not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"precision {requested!r}: expected auto, fp32, fp16 or bf16")
    if device.type != "cuda" or requested == "fp32":
        return Precision(device.type, None, False)
    if requested == "bf16" or (requested == "auto" and family_spec(family).bf16):
        return Precision("cuda", torch.bfloat16, False)
    return Precision("cuda", torch.float16, True)


def frozen_on(model: torch.nn.Module, device: torch.device, precision: Precision,
              family: str = DEFAULT) -> torch.nn.Module:
    """``model`` as a frozen, inference-only teacher on ``device``: eval mode, no gradients and, for a
    ``causal_lm`` family whose policy computes in bf16 (CUDA), bf16 weights: half the memory of fp32.
    Encoder teachers keep fp32 weights (their evaluation compares teacher and student embeddings in
    one dtype), as does everything on CPU. Returns the model."""
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model.to(frozen_dtype(precision, family))


def frozen_dtype(precision: Precision, family: str = DEFAULT) -> torch.dtype:
    """The weight dtype ``frozen_on`` gives a teacher: bf16 for a ``causal_lm`` family under a bf16
    policy (CUDA), else fp32."""
    return torch.bfloat16 if precision.dtype is torch.bfloat16 and family_spec(family).bf16 else torch.float32


def device_memory_bytes(device: torch.device) -> int | None:
    """The total memory of ``device`` in bytes when it is a GPU; None on CPU (no fixed budget)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)

"""raykd's one optimizer loop, pure torch (no Ray): AdamW over a model's trainable parameters, an LR schedule,
gradient accumulation over micro-steps, a grad scaler (fp16 on CUDA; a no-op elsewhere) and gradient clipping.

Every training loop in raykd runs through it (``backward`` each micro-step, ``step`` when it returns True): the
Ray trial loop (``ray_layer.loop``: it adds DDP / FSDP synchronisation, evaluation and reporting around them),
teacher adaptation (``stages.adapt``), the test helpers, the benchmarks and ``scripts/topk_gap.py``."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def linear_warmup_decay(warmup: int, total: int) -> Callable[[int], float]:
    """The trials' schedule: the LR factor of step s — linear warm-up over ``warmup`` steps, then linear decay
    to 0 at ``total``."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total - s) / max(1, total - warmup))
    return factor


def warmup_times_decay(warmup: int, total: int) -> Callable[[int], float]:
    """Teacher adaptation's schedule: min(1, (s + 1) / warmup) × max(0, 1 − s / total)."""
    return lambda s: min(1.0, (s + 1) / max(1, warmup)) * max(0.0, 1 - s / max(1, total))


class Engine:
    """AdamW over ``model``'s trainable parameters (``lr``, ``weight_decay``: torch's default 0.01), the LR
    ``schedule`` (a step → factor function; None: constant), ``grad_accum`` micro-steps per optimizer step, a
    ``scaler`` (``torch.amp.GradScaler``; None: disabled) and clipping of the gradient norm to ``clip`` (None:
    none). ``backward`` one micro-step's loss, ``step`` when it returns True."""

    def __init__(self, model: nn.Module, *, lr: float, weight_decay: float = 0.01,
                 schedule: Callable[[int], float] | None = None, grad_accum: int = 1, clip: float | None = 1.0,
                 scaler=None):
        self.model, self.grad_accum, self.clip = model, grad_accum, clip
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                     weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule) if schedule is not None else None
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
        self.micro = 0

    def backward(self, loss: torch.Tensor) -> bool:
        """Back-propagate one micro-step's ``loss`` (÷ ``grad_accum``, through the scaler); returns whether this
        micro-step completes an optimizer step's accumulation."""
        self.scaler.scale(loss / self.grad_accum).backward()
        self.micro += 1
        return self.micro % self.grad_accum == 0

    def step(self) -> float:
        """Unscale, clip, step the optimizer and the scaler, zero the gradients, advance the schedule; returns
        the LR this step used."""
        self.scaler.unscale_(self.opt)
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        lr = self.sched.get_last_lr()[0] if self.sched is not None else self.opt.param_groups[0]["lr"]
        if self.sched is not None:
            self.sched.step()
        return lr

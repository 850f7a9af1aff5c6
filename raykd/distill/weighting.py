"""How loss terms are combined: fixed weights, or gradient-aware dynamic weights (GradNorm-style)."""

from __future__ import annotations

import torch


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` averaged over the ranks of the default process group (unchanged without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x = x / dist.get_world_size()
    return x


class FixedWeights:
    """total = Σ w_t · L_t with the given weights (1 for terms not listed)."""

    def __init__(self, weights: dict[str, float] | None = None):
        self.weights = dict(weights or {})

    def current(self, names) -> dict[str, float]:
        return {n: float(self.weights.get(n, 1.0)) for n in names}

    def combine(self, terms: dict[str, torch.Tensor], shared_params=None) -> torch.Tensor:
        """The weighted sum of the loss terms (a scalar)."""
        w = self.current(terms)
        return sum(w[n] * t for n, t in terms.items())


class GradNormWeights:
    """Gradient-aware dynamic weights in the spirit of GradNorm (Chen et al., 2018).

    Every ``every`` steps, G_t = ‖∇_θ L_t‖ on the shared student parameters θ and the relative
    progress r_t = (L_t / L_t(0)) / mean_t(L_t / L_t(0)) give the target weights
    w*_t ∝ mean(G) / G_t · r_t^α (normalised to sum to the number of terms: each term is pushed to
    the same gradient scale, slower-learning terms more); the weights follow w ← (1−m)·w + m·w*.
    Unlike GradNorm's inner optimisation of w, this closed form needs no second-order gradients.
    """

    def __init__(self, base: dict[str, float] | None = None, alpha: float = 1.5, every: int = 10,
                 momentum: float = 0.3):
        self.base = dict(base or {})
        self.alpha, self.every, self.momentum = alpha, every, momentum
        self.weights: dict[str, torch.Tensor] = {}  # 0-dim fp32 tensors on the loss's device (no host sync)
        self.initial: dict[str, torch.Tensor] = {}
        self.calls = 0

    def current(self, names) -> dict:
        """Each term's weight: a 0-dim tensor once updated, else its base weight (a float)."""
        return {n: self.weights.get(n, float(self.base.get(n, 1.0))) for n in names}

    def combine(self, terms: dict[str, torch.Tensor], shared_params=None) -> torch.Tensor:
        """The dynamically weighted sum of the loss terms (a scalar); updates the weights first
        every ``every`` calls when gradients are being recorded."""
        for n, t in terms.items():
            if n not in self.initial:
                self.initial[n] = t.detach().float().clamp_min(1e-8)
        if shared_params is not None and torch.is_grad_enabled() and self.calls % self.every == 0 and len(terms) > 1:
            self._update(terms, [p for p in shared_params if p.requires_grad])
        self.calls += 1
        w = self.current(terms)
        return sum(w[n] * t for n, t in terms.items())

    def _update(self, terms, params) -> None:
        """New weights from the terms' gradient norms on ``params``: computed in fp32 from the unscaled
        terms (a GradScaler scales only the total), on the loss's device, and averaged over DDP ranks
        so that every rank combines its terms with the same weights."""
        names = list(terms)
        device = terms[names[0]].device
        norms = []
        for n in names:
            grads = torch.autograd.grad(terms[n], params, retain_graph=True, allow_unused=True)
            sq = torch.zeros((), dtype=torch.float32, device=device)
            for g in grads:
                if g is not None:
                    part = g.detach().float().pow(2).sum()
                    if hasattr(part, "full_tensor"):  # FSDP: a sharded parameter's gradient (a DTensor):
                        part = part.full_tensor()       # the sum over every rank's shard (a collective)
                    sq = sq + part
            norms.append(torch.sqrt(sq + 1e-12))
        g = torch.stack(norms)
        ratio = torch.stack([terms[n].detach().float() / torch.as_tensor(self.initial[n], device=device) for n in names])
        r = ratio / ratio.mean().clamp_min(1e-12)
        target = g.mean() / g.clamp_min(1e-12) * r.pow(self.alpha)
        target = target * len(names) / target.sum()
        target = _mean_over_ranks(target)
        for n, t in zip(names, target.detach()):
            prev = self.weights.get(n, float(self.base.get(n, 1.0)))
            self.weights[n] = (1 - self.momentum) * prev + self.momentum * t

    def state_dict(self) -> dict:
        return {"weights": self.weights, "initial": self.initial, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        as_t = lambda d: {k: torch.as_tensor(v, dtype=torch.float32) for k, v in d.items()}  # noqa: E731
        self.weights, self.initial, self.calls = as_t(state["weights"]), as_t(state["initial"]), int(state["calls"])

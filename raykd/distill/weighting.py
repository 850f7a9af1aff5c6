"""How loss terms are combined: fixed weights, or gradient-aware dynamic weights (GradNorm-style)."""

from __future__ import annotations

import torch


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
        self.weights: dict[str, float] = {}
        self.initial: dict[str, float] = {}
        self.calls = 0

    def current(self, names) -> dict[str, float]:
        return {n: self.weights.get(n, float(self.base.get(n, 1.0))) for n in names}

    def combine(self, terms: dict[str, torch.Tensor], shared_params=None) -> torch.Tensor:
        """The dynamically weighted sum of the loss terms (a scalar); updates the weights first
        every ``every`` calls when gradients are being recorded."""
        for n, t in terms.items():
            self.initial.setdefault(n, max(float(t.detach()), 1e-8))
        if shared_params is not None and torch.is_grad_enabled() and self.calls % self.every == 0 and len(terms) > 1:
            self._update(terms, [p for p in shared_params if p.requires_grad])
        self.calls += 1
        w = self.current(terms)
        return sum(w[n] * t for n, t in terms.items())

    def _update(self, terms, params) -> None:
        names = list(terms)
        norms = []
        for n in names:
            grads = torch.autograd.grad(terms[n], params, retain_graph=True, allow_unused=True)
            norms.append(torch.sqrt(sum((g.detach().float() ** 2).sum() for g in grads if g is not None)
                                    + torch.tensor(1e-12)))
        g = torch.stack(norms)
        ratio = torch.tensor([float(terms[n].detach()) / self.initial[n] for n in names])
        r = ratio / ratio.mean().clamp_min(1e-12)
        target = g.mean() / g.clamp_min(1e-12) * r.pow(self.alpha)
        target = target * len(names) / target.sum()
        for n, t in zip(names, target.tolist()):
            prev = self.weights.get(n, float(self.base.get(n, 1.0)))
            self.weights[n] = (1 - self.momentum) * prev + self.momentum * t

    def state_dict(self) -> dict:
        return {"weights": self.weights, "initial": self.initial, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.weights, self.initial, self.calls = dict(state["weights"]), dict(state["initial"]), state["calls"]

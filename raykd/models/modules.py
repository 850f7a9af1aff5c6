"""The method's learned pieces (README, *Models and distillation*): structural projection φ, domain-aware fusion F(E, Z)
and multi-granularity aggregation. Plain torch modules."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import orthogonal


class StructuralProjection(nn.Module):
    """Learned maps of a teacher layer (width d_t) and a student layer (width d_s) into a shared
    d'-dimensional space. The teacher side has orthonormal rows (d' ≤ d_t) or columns, so it can
    rotate and select but never collapse the target to zero; the student side is a free linear map."""

    def __init__(self, d_student: int, d_teacher: int, d_shared: int):
        super().__init__()
        if d_shared <= 0:
            raise ValueError(f"projection_dim must be positive, got {d_shared}")
        self.student = nn.Linear(d_student, d_shared)
        # matrix_exp for every shape (torch's default for a square matrix). The default for non-square
        # ones, householder, collapses to the zero matrix within ~20 AdamW steps with weight decay
        # (torch 2.13; measured: WᵀW 1 → 0 at d' = 256 around a width-128 teacher): the target then
        # vanished and every d' ≠ d_t trained the student on nothing (docs/findings-untuned.md (c)).
        self.teacher = orthogonal(nn.Linear(d_teacher, d_shared, bias=False), orthogonal_map="matrix_exp")

    def forward(self, h_student: torch.Tensor, h_teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student states, teacher states) in the shared space, [..., d']."""
        return self.student(h_student), self.teacher(h_teacher.to(self.student.weight.dtype))


class DomainAwareFusion(nn.Module):
    """Gated cross-attention adapter: E' = E + g · σ(gate[dept]) · CrossAttn(E + dept_emb, Z).

    E [b, t, d] are the student's input embeddings, Z [b, t_z, d_z] the teacher's projected states,
    ``department`` [b] ids (−1 = unknown). ``anneal`` g goes from 1 to 0 over training (set by the
    objective); at g = 0 — and always in eval mode — the output is E: the student runs alone.
    """

    def __init__(self, d_model: int, d_z: int, n_departments: int, heads: int = 4, gate_init: float = -3.0):
        super().__init__()
        heads = heads if d_model % heads == 0 else 1
        self.dept = nn.Embedding(n_departments + 1, d_model)
        self.gate = nn.Parameter(torch.full((n_departments + 1,), gate_init))
        self.attn = nn.MultiheadAttention(d_model, heads, kdim=d_z, vdim=d_z, batch_first=True)
        self.n_departments = n_departments
        self.register_buffer("anneal", torch.tensor(1.0))
        self.anneal_value = 1.0  # the same on the host: deciding whether to run reads no device tensor

    def set_anneal(self, g: float) -> None:
        """Set the annealing factor g (1 → 0 over training)."""
        self.anneal_value = float(g)
        self.anneal.fill_(self.anneal_value)

    def forward(self, e: torch.Tensor, z: torch.Tensor, z_mask: torch.Tensor, department: torch.Tensor) -> torch.Tensor:
        if not self.training or self.anneal_value == 0.0:
            return e
        d = torch.where(department < 0, torch.full_like(department, self.n_departments), department)
        fused, _ = self.attn(e + self.dept(d)[:, None, :], z.to(e.dtype), z.to(e.dtype),
                             key_padding_mask=~z_mask.bool(), need_weights=False)
        return e + self.anneal * torch.sigmoid(self.gate[d])[:, None, None] * fused


class MultiGranularityAggregation(nn.Module):
    """Y = Σ_v a_v · view_v over token (masked mean), phrase (masked mean of windowed means, one view
    per width) and sentence ([CLS]) views, with per-example attention a = softmax(wᵀ tanh(W view))."""

    def __init__(self, d_model: int, widths: tuple[int, ...] = (2, 3, 4)):
        super().__init__()
        self.widths = tuple(widths)
        self.score = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh(), nn.Linear(d_model, 1, bias=False))

    def views(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The granularity views [b, 2 + len(widths), d]."""
        m = mask.to(h.dtype)
        token = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
        out = [token]
        for w in self.widths:
            if h.shape[1] < w:
                out.append(token)
                continue
            win = F.avg_pool1d((h * m[..., None]).transpose(1, 2), w, stride=1).transpose(1, 2)
            cnt = F.avg_pool1d(m[:, None, :], w, stride=1).transpose(1, 2)  # share of real tokens
            full = (cnt > 0.999).to(h.dtype)  # windows entirely inside the sequence
            phrase = (win * full).sum(1) / full.sum(1).clamp_min(1.0)
            short = full.sum(1) == 0  # sequence shorter than the window: fall back to the token view
            out.append(torch.where(short, token, phrase))
        out.append(h[:, 0])
        return torch.stack(out, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Aggregated representation Y [b, d]."""
        v = self.views(h, mask)
        a = torch.softmax(self.score(v).squeeze(-1), dim=-1)
        return (a[..., None] * v).sum(1)

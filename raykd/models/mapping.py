"""Teacher ↔ student layer map (uniform, TinyBERT style) for a distillation depth."""

from __future__ import annotations

from ..errors import RaykdError


def layer_map(teacher_layers: int, student_layers: int, depth: int | None = None) -> list[tuple[int, int]]:
    """Return [(student layer i, teacher layer g(i))] for i = 1…depth, with g(i) = i·L_T/L_S.

    Layers are 1-based indices into HF ``hidden_states`` (0 is the embedding output), so 24→6 maps
    1→4, 2→8, …, 6→24. ``depth`` k (default L_S) keeps the first k pairs. L_T must be a multiple of
    L_S; 1 ≤ k ≤ L_S. Raises RaykdError (a configuration error) otherwise.
    """
    if student_layers < 1 or teacher_layers < student_layers:
        raise RaykdError(f"layer map: need 1 ≤ student layers ≤ teacher layers, got L_S={student_layers}, "
                         f"L_T={teacher_layers}")
    if teacher_layers % student_layers:
        raise RaykdError(f"layer map: teacher layers ({teacher_layers}) must be a multiple of student layers "
                         f"({student_layers}) for the uniform map")
    depth = student_layers if depth is None else depth
    if not 1 <= depth <= student_layers:
        raise RaykdError(f"depth {depth}: must be between 1 and the student's {student_layers} layers")
    step = teacher_layers // student_layers
    return [(i, i * step) for i in range(1, depth + 1)]

"""Teacher ↔ student layer map (uniform, TinyBERT style) for a distillation depth."""

from __future__ import annotations

from ..errors import RaykdError


def layer_map(teacher_layers: int, student_layers: int, depth: int | None = None) -> list[tuple[int, int]]:
    """Return [(student layer i, teacher layer g(i))] for i = 1…depth, with g(i) = round(i·L_T/L_S)
    (halves rounded up; exact when L_S divides L_T).

    Layers are 1-based indices into HF ``hidden_states`` (0 is the embedding output), so 24→6 maps
    1→4, 2→8, …, 6→24, and 32→22 maps 1→1, 2→3, …, 22→32 (every teacher layer used at most once,
    the last always the teacher's last). ``depth`` k (default L_S) keeps the first k pairs;
    1 ≤ L_S ≤ L_T, 1 ≤ k ≤ L_S. Raises RaykdError (a configuration error) otherwise.
    """
    if student_layers < 1 or teacher_layers < student_layers:
        raise RaykdError(f"layer map: need 1 ≤ student layers ≤ teacher layers, got L_S={student_layers}, "
                         f"L_T={teacher_layers}")
    depth = student_layers if depth is None else depth
    if not 1 <= depth <= student_layers:
        raise RaykdError(f"depth {depth}: must be between 1 and the student's {student_layers} layers")
    return [(i, (2 * i * teacher_layers + student_layers) // (2 * student_layers)) for i in range(1, depth + 1)]

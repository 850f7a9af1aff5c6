"""What every family's evaluation shares: which pairs are evaluation pairs (a seeded hash order of ``pair_id``,
the same for every trial of every study on the data), the bootstrap size behind each final metric's CI, the
process-wide memo of the fixed teacher's part, and the ``Evaluation`` interface the trial loop calls. Each family's
part (``masked_lm``, ``causal_lm``) is a subclass, named by its ``FamilySpec.evaluation``. Pure torch, no Ray."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import socket
import sys
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

BOOTSTRAP = 200  # resamples of the evaluation pairs behind each final metric's 95 % CI
EVAL_SEED = 0  # which pairs are evaluation pairs, and their candidates / distractors: the same for every trial


def eval_order(ids: list[str], what: str = "eval") -> list[int]:
    """Indices of ``ids`` (pair ids) in the seeded hash order of ``what`` (``EVAL_SEED``): a random order that
    depends on the pair and nothing else, so the first k are the same pairs for every trial and study."""
    return sorted(range(len(ids)), key=lambda i: hashlib.blake2b(f"{EVAL_SEED}|{what}|{ids[i]}".encode(),
                                                                  digest_size=8).digest())


class TeacherMemo:
    """Process-wide memo of what evaluation computes of the fixed teacher (its outputs on a split's pairs, its
    task loss, its scores as its own student), keyed by teacher, data, split and pair count: a reused Tune actor
    (Train local mode) evaluates the same teacher on the same pairs trial after trial, and the teacher is most
    of an evaluation's cost. Keeps the ``keep`` latest."""

    def __init__(self, keep: int = 12):
        self.keep, self.items = keep, OrderedDict()

    def get(self, key: tuple, compute):
        """The value memoised under ``key``, computed by ``compute()`` the first time."""
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = compute()
        while len(self.items) > self.keep:
            self.items.popitem(last=False)
        return value


TEACHER_MEMO = TeacherMemo()
STORED_MEMO_DIR = "eval_memo"  # PREPARED/eval_memo/: the teacher's evaluation outputs kept between processes


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 (hex, 16 characters) over raykd's Python sources and the torch / transformers versions: a stored
    teacher output is used only by the code that computed it."""
    import torch
    import transformers

    h = hashlib.sha256(f"{torch.__version__}|{transformers.__version__}".encode())
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def weights_fingerprint(model) -> str | None:
    """sha256 (hex, 16 characters) over each parameter's name, shape, dtype and first 256 values — tells two sets of
    weights apart without reading all of a large model; None for a sharded model (its values live on every rank)."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if hasattr(p, "to_local"):
                return None
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}".encode())
            h.update(p.detach().reshape(-1)[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _storable(value):
    """``value`` with NumPy arrays as tagged tensors (``torch.load(weights_only=True)`` reads no NumPy)."""
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_storable(v) for v in value)
    return value


def _restored(value):
    """The inverse of ``_storable``."""
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return value["__ndarray__"].numpy()
        return {k: _restored(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_restored(v) for v in value)
    return value


def stored(directory: str | Path, key: tuple, compute):
    """``compute`` kept on disk: a function returning the value stored under ``key`` in ``directory`` (written by
    this code version: ``code_fingerprint``), else ``compute()``, which it then stores (atomically; files of other
    code versions are removed; an unwritable directory only means no store). For deterministic values only."""
    import torch

    directory = Path(directory)
    prefix = code_fingerprint()
    path = directory / f"{prefix}-{hashlib.sha256(repr(key).encode()).hexdigest()[:24]}.pt"

    def load_or_compute():
        if path.exists():
            try:
                return _restored(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as e:  # a damaged file: computed again and rewritten
                print(f"[eval] stored teacher output {path} unreadable ({type(e).__name__}); computing it again",
                      file=sys.stderr, flush=True)
        value = compute()
        tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            torch.save(_storable(value), tmp)
            os.replace(tmp, path)
            for old in directory.glob("*.pt"):
                if not old.name.startswith(prefix):
                    old.unlink(missing_ok=True)
        except (OSError, RuntimeError) as e:  # torch.save reports an unwritable file or a full disk as RuntimeError
            with contextlib.suppress(OSError):  # a half-written file
                tmp.unlink(missing_ok=True)
            print(f"[eval] teacher output not stored in {directory} ({str(e).splitlines()[0]}); computed per process "
                  "instead", file=sys.stderr, flush=True)
        return value

    return load_or_compute


class Evaluation:
    """What rank 0 evaluates: the student alone on the validation pairs at every report and on the test pairs
    at the end, against the fixed teacher, whose part is memoised (``memo``). A family's part implements
    ``val`` (the validation batches), ``split`` and ``efficiency``; a family whose teacher may be sharded over
    the worker group also ``teacher_part``."""

    memo_tag = ""  # distinguishes one family's memo entries from another's for the same teacher and data

    def __init__(self, prepared: str, manifest: dict, pairs: int, teacher_key: str | None = None):
        self.prepared, self.manifest, self.pairs, self.teacher_key = prepared, manifest, pairs, teacher_key
        self._local = TeacherMemo(keep=8)

    def memo(self, teacher, what: str, compute, *key, keep: bool = False):
        """``compute()`` once per (teacher, data, pairs, ``key``, what): per process when the teacher has a
        ``teacher_key``, else for this evaluation's lifetime only (an object id may be reused by another teacher
        once this one is gone). With ``keep`` (deterministic values only: never timings) the value is also kept
        on disk under ``PREPARED/eval_memo/`` for every later process and study (``stored``), keyed by the
        teacher's weights too (``weights_fingerprint``) and the device type."""
        if self.teacher_key is None:
            return self._local.get((id(teacher), what), compute)
        full = (self.teacher_key, self.manifest["key"], self.pairs, *key, self.memo_tag, what)
        if keep and full not in TEACHER_MEMO.items:
            weights = weights_fingerprint(teacher)
            if weights is not None:
                device = next(teacher.parameters()).device.type
                compute = stored(Path(self.prepared) / STORED_MEMO_DIR, (*full, weights, device), compute)
        return TEACHER_MEMO.get(full, compute)

    @property
    def val(self) -> list[dict]:
        """The validation pairs as collated batches."""
        raise NotImplementedError

    def split(self, student, teacher, split: str, bootstrap: int = 0, prefix: str = "") -> dict:
        """Metrics named ``<prefix><split>/<metric>`` (``split``: val or test; ``bootstrap`` resamples for CIs)."""
        raise NotImplementedError

    def efficiency(self, student, teacher, batch_size: int, seq_len: int) -> dict:
        """``test/…`` sizes, latencies and speedups of the student beside the teacher."""
        raise NotImplementedError

    def teacher_part(self, teacher, seq_len: int) -> None:
        """Compute, on every rank together, what this evaluation reads of a teacher sharded over the worker
        group (a family whose teacher never shards has nothing to do)."""


def evaluation_for(family: str, prepared: str, manifest: dict, pairs: int, *, tokens=None, vocab_size: int | None = None,
                   template: dict | None = None, teacher_key: str | None = None,
                   teacher_view: dict | None = None) -> Evaluation:
    """The evaluation of a trial of ``family`` (its ``FamilySpec.evaluation``, ``"module:Class"``), built from
    what the trial knows: the token ids, the vocabulary size, for a templated family the template and, for a
    teacher with a tokenizer of its own, its teacher view (passed only then: a family without the
    ``teacher_tokens`` capability never gets one)."""
    from raykd.models.families.spec import family_spec

    module, cls = family_spec(family).evaluation.split(":")
    extra = {"teacher_view": teacher_view} if teacher_view else {}
    return getattr(importlib.import_module(module), cls).for_trial(
        prepared, manifest, pairs, tokens=tokens, vocab_size=vocab_size, template=template, teacher_key=teacher_key,
        **extra)

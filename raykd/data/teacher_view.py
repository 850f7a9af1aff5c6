"""The teacher's own tokenization of a prepared directory, for a study whose teacher and student use
different tokenizers (``teacher.tokenizer``): made once from the prepared rows' text, content-addressed
like the shards themselves. Layout::

    PREPARED/teacher_view/<key>/                  a prepared directory of its own: the same splits, shards,
                                                  rows and row order as PREPARED, the ids of the teacher's
                                                  tokenizer (saved beside them), its own manifest — what the
                                                  teacher's adaptation and its evaluation read
    PREPARED/teacher_view/<key>/paired/train/part-NNNNN.parquet
                                                  the train rows with both tokenizations — pair_id,
                                                  department, q_input_ids, a_input_ids (the student's),
                                                  teacher_q_input_ids, teacher_a_input_ids, and a_span /
                                                  teacher_a_span (each answer token's span: where the two
                                                  tokenizations of the answer line up, ``token_spans``) —
                                                  what the trials stream
    PREPARED/teacher_view/<key>/shared_vocabulary.json
                                                  {"student": [...], "teacher": [...]}: the vocabulary entries
                                                  both tokenizers hold under one string (``gold``'s matched part)

The key hashes the prepared data's key and the teacher's tokenizer (a directory by its files' sha256),
so another tokenizer or other data makes another view, and an unchanged one is reused. The teacher's
tokenizer is trained like the data's (``train:N`` / ``train-bpe:N`` on the train split's texts) or
loaded. Pure pyarrow + tokenizers, no Ray: a corpus of MedDialog's size (~3 M pairs) tokenizes in
minutes on the driver."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from raykd.atomic import atomic_directory
from raykd.data import meddialog, token_spans, tokenizer as tokenization
from raykd.data.shards import COLUMNS, SPLITS, PrepareSettings, Progress, _write, load_manifest, shard_paths
from raykd.errors import RaykdError

VIEW_VERSION = 2  # 2: answer spans and the shared vocabulary
TEACHER_COLUMNS = ("teacher_q_input_ids", "teacher_a_input_ids")
SPAN_COLUMNS = ("a_span", "teacher_a_span")
PAIRED_COLUMNS = ("pair_id", "department", "q_input_ids", "a_input_ids", *TEACHER_COLUMNS, *SPAN_COLUMNS)


def view_key(manifest: dict, tokenizer_spec: str) -> str:
    """Content key of the teacher view of the prepared data ``manifest`` under ``tokenizer_spec``."""
    kind, spec = tokenization.parse_spec(tokenizer_spec)
    tok = "dir:" + tokenization.tokenizer_sha256(spec) if kind == "hf" and os.path.isdir(str(spec)) else tokenizer_spec
    payload = {"data": manifest["key"], "tokenizer": tok, "version": VIEW_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def view_dir(prepared: str | Path, key: str) -> Path:
    """Where the teacher view with ``key`` of ``prepared`` lives."""
    return Path(prepared).absolute() / "teacher_view" / key[:16]


def prepare_view(prepared: str | Path, manifest: dict, tokenizer_spec: str, quiet: bool = False) -> tuple[str, dict]:
    """Write (or reuse) the teacher view of ``prepared`` under ``tokenizer_spec`` (see the module
    docstring). Returns (its directory, its manifest). RaykdError for a tokenizer that cannot be
    trained or loaded; nothing is left behind on failure (one rename when complete)."""
    import pyarrow.parquet as pq

    key = view_key(manifest, tokenizer_spec)
    out = view_dir(prepared, key)
    progress = Progress("teacher-view", quiet)
    if (out / "manifest.json").exists():
        try:
            existing = load_manifest(out)
            if existing.get("key") == key:
                progress(f"reusing {out} (the teacher's tokenization {tokenizer_spec})", force=True)
                return str(out), existing
        except RaykdError:
            pass  # stale or damaged: rebuild it
    rows = {}
    for split in SPLITS:
        tables = [pq.read_table(p, columns=list(COLUMNS[:5])) for p in shard_paths(prepared, split, manifest)]
        rows[split] = {c: [v for t in tables for v in t.column(c).to_pylist()] for c in COLUMNS[:5]}
    settings = PrepareSettings(raw=[], out=str(out), tokenizer=tokenizer_spec, max_length=manifest["max_length"],
                               shard_rows=manifest["shard_rows"], quiet=quiet)
    progress(f"tokenizing {sum(len(r['pair_id']) for r in rows.values()):,} pairs with the teacher's tokenizer "
             f"{tokenizer_spec} → {out}", force=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out) as tmp:
        view = _write(tmp, settings, rows, progress)
        tok_s = tokenization.load_tokenizer(str(Path(prepared).absolute() / manifest["tokenizer"]["path"]))
        tok_t = tokenization.load_tokenizer(str(tmp / view["tokenizer"]["path"]))
        shared_s, shared_t = token_spans.shared_vocabulary(tok_s, tok_t, int(manifest["tokenizer"]["vocab_size"]),
                                                           int(view["tokenizer"]["vocab_size"]))
        (tmp / "shared_vocabulary.json").write_text(json.dumps({"student": shared_s, "teacher": shared_t}))
        view.update({"key": key, "view_of": manifest["key"], "counts": manifest.get("counts", {}),
                     "sources": manifest.get("sources", []),
                     "paired": _write_paired(tmp, prepared, manifest, view, (tok_s, tok_t))})
        (tmp / "manifest.json").write_text(json.dumps(view, ensure_ascii=False, indent=1))
    return str(out), view


def _write_paired(tmp: Path, prepared: str | Path, manifest: dict, view: dict, tokenizers) -> list[dict]:
    """The paired train shards under ``tmp/paired/train`` (one per train shard, rows checked pair by
    pair: the same pair_id on both sides), with each answer token's span under the two ``tokenizers``
    (student's, teacher's); returns their manifest entries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp / "paired" / "train").mkdir(parents=True)
    entries = []
    for i, (mine, theirs) in enumerate(zip(shard_paths(prepared, "train", manifest),
                                           [str(tmp / s["file"]) for s in view["splits"]["train"]["shards"]])):
        a = pq.read_table(mine, columns=["pair_id", "department", "q_input_ids", "a_input_ids", "answer"])
        b = pq.read_table(theirs, columns=["pair_id", "q_input_ids", "a_input_ids"])
        if a.column("pair_id").to_pylist() != b.column("pair_id").to_pylist():
            raise RaykdError(f"teacher view: train shard {i} of {prepared} and its teacher tokenization hold other "
                             "rows (the prepared directory changed while it was read?)")
        try:
            spans = token_spans.token_spans(*tokenizers, a.column("answer").to_pylist(),
                                            a.column("a_input_ids").to_pylist(), b.column("a_input_ids").to_pylist(),
                                            manifest["max_length"])
        except ValueError as e:
            raise RaykdError(f"teacher view of {prepared}: train shard {i}: {e}") from None
        table = pa.Table.from_arrays([*a.drop(["answer"]).columns, b.column("q_input_ids"), b.column("a_input_ids"),
                                      *(pa.array(x, pa.list_(pa.int32())) for x in spans)],
                                     names=list(PAIRED_COLUMNS))
        rel = f"paired/train/part-{i:05d}.parquet"
        pq.write_table(table, tmp / rel, compression="zstd")
        entries.append({"file": rel, "rows": table.num_rows, "bytes": (tmp / rel).stat().st_size,
                        "sha256": meddialog.file_sha256(tmp / rel)})
    return entries


def paired_paths(view: str | Path, view_manifest: dict) -> list[str]:
    """The paired train shards of a teacher view, in order, each checked against its manifest entry
    (size and row count); RaykdError naming the first that is missing or differs."""
    import pyarrow.parquet as pq

    paths = []
    for e in view_manifest.get("paired", []):
        p = Path(view).absolute() / e["file"]
        if not p.exists() or p.stat().st_size != e["bytes"] or pq.ParquetFile(p).metadata.num_rows != e["rows"]:
            raise RaykdError(f"{p}: a paired train shard of the teacher view is missing or differs from its manifest "
                             "(delete the teacher_view directory to rebuild it)")
        paths.append(str(p))
    if not paths:
        raise RaykdError(f"{view}: a teacher view without paired train shards")
    return paths


def shared_vocabulary(view: str | Path) -> tuple[list[int], list[int]]:
    """(student ids, teacher ids) of the vocabulary entries both tokenizers of a teacher view hold under
    one string (``shared_vocabulary.json``); RaykdError when the view has none (made before version 2)."""
    p = Path(view) / "shared_vocabulary.json"
    if not p.exists():
        raise RaykdError(f"{p}: missing (a teacher view made before spans were recorded: delete {view} to rebuild)")
    d = json.loads(p.read_text())
    return [int(i) for i in d["student"]], [int(i) for i in d["teacher"]]

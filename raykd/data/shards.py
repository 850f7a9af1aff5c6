"""Raw MedDialog-CN → cleaned, de-duplicated, leak-free split, tokenized Parquet shards + manifest.

Layout of a prepared directory::

    DIR/manifest.json                    counts, shards, tokenizer, sources, skipped items, key
    DIR/tokenizer/                       the HF tokenizer the ids were made with
    DIR/{train,validation,test}/part-NNNNN.parquet   (zstd) one row per QA pair

Writes go to a temporary sibling directory that is renamed into place at the end, so an interrupted
run never leaves a shard set that looks complete. The same inputs and settings reuse the result.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from raykd._version import __version__
from raykd.atomic import atomic_directory
from raykd.data import meddialog, tokenizer as tokenization
from raykd.errors import RaykdError

FORMAT = "raykd.prepared/1"
SPLITS = ("train", "validation", "test")
COLUMNS = ("pair_id", "dialogue_id", "department", "question", "answer", "q_input_ids", "a_input_ids")
SPLIT_RULE = "int(sha256(dialogue_id)[:16], 16) % 10: 0-7 train, 8 validation, 9 test"
MAX_SKIPPED_LISTED = 10000
TOKENIZER_TRAIN_TEXTS = 100_000  # train:VOCAB learns from at most this many evenly spaced train texts


@dataclass
class PrepareSettings:
    """Everything that determines a prepared directory's content (``out`` and ``strict`` aside)."""

    raw: list[str]
    out: str
    tokenizer: str = "train:8000"
    max_length: int = 512
    shard_rows: int = 50000
    strict: bool = False
    quiet: bool = False
    extra: dict = field(default_factory=dict)


class Progress:
    """Prints progress lines to stderr, at most one per ``every`` seconds unless forced."""

    def __init__(self, stage: str, quiet: bool = False, every: float = 2.0):
        self.stage, self.quiet, self.every, self.last = stage, quiet, every, 0.0

    def __call__(self, msg: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.quiet and (force or now - self.last >= self.every):
            self.last = now
            print(f"[{self.stage}] {msg}", file=sys.stderr, flush=True)


def split_of(dialogue_id: str) -> str:
    """The split of a dialogue: a stable hash of its key, 8:1:1 (see ``SPLIT_RULE``)."""
    bucket = int(hashlib.sha256(dialogue_id.encode("utf-8")).hexdigest()[:16], 16) % 10
    return "train" if bucket < 8 else ("validation" if bucket == 8 else "test")


def _content_key(settings: PrepareSettings, sources: list[tuple[str, str]], hashes: list[str]) -> str:
    kind, spec = tokenization.parse_spec(settings.tokenizer)
    tok_id = settings.tokenizer
    if kind == "hf" and os.path.isdir(str(spec)):
        tok_id = "dir:" + tokenization.tokenizer_sha256(spec)
    payload = {"format": FORMAT, "sources": [[fmt, h] for (_, fmt), h in zip(sources, hashes)], "tokenizer": tok_id,
               "max_length": settings.max_length, "shard_rows": settings.shard_rows}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _check_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RaykdError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise RaykdError(f"--out {out}: a non-empty directory that is not a raykd prepared directory; "
                         "choose an empty or new path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.probe-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise RaykdError(f"--out {out}: cannot write there: {e.strerror}") from None


def prepare(settings: PrepareSettings) -> dict:
    """Prepare ``settings.raw`` into ``settings.out``; returns the manifest (dict).

    Raises RaykdError for a missing path, an empty input, an unwritable output, a bad tokenizer, or
    (with ``strict``) any skipped item; nothing is written in those cases.
    """
    t0 = time.monotonic()
    if settings.max_length < 8:
        raise RaykdError(f"--max-length {settings.max_length}: must be at least 8")
    if settings.shard_rows < 1:
        raise RaykdError(f"--shard-rows {settings.shard_rows}: must be at least 1")
    out = Path(settings.out).absolute()
    progress = Progress("prepare", settings.quiet)
    sources = meddialog.list_sources(settings.raw)
    _check_output(out)
    hashes = [meddialog.hf_sha256(p) if fmt == "hf" else meddialog.file_sha256(Path(p)) for p, fmt in sources]
    key = _content_key(settings, sources, hashes)
    existing = out / "manifest.json"
    if existing.exists():
        try:
            manifest = load_manifest(out)
            if manifest.get("key") == key:
                progress(f"reusing {out} (same inputs and settings, key {key[:12]})", force=True)
                return manifest
        except RaykdError:
            pass  # stale or damaged: rebuild it

    # 1. read every source (in parallel processes for large inputs), keeping source order
    infos, records = _read_all(sources, progress)
    skipped = _report_skipped(infos, settings.strict)
    # 2. de-duplicate exact pairs (the first in source order is kept), split by dialogue
    rows, built, dups = _split_rows(infos, records)
    dialogues = sum(len(r) for r in records)
    total = sum(len(rows[s]["pair_id"]) for s in SPLITS)
    progress(f"{built:,} pairs built · {dups:,} exact duplicates removed · {total:,} kept", force=True)
    if total == 0:
        raise RaykdError(f"--raw {' '.join(settings.raw)}: no QA pairs found in the input "
                         f"({len(skipped)} item(s) skipped)")
    if not rows["train"]["pair_id"]:
        raise RaykdError("the train split is empty: too few dialogues to split 8:1:1")

    with atomic_directory(out) as tmp:
        manifest = _write(tmp, settings, rows, progress)
        manifest.update({
            "key": key,
            "sources": [info.as_dict() for info in infos],
            "skipped_total": len(skipped),
            "skipped": [s.as_dict() for s in skipped[:MAX_SKIPPED_LISTED]],
            "counts": {"dialogues": dialogues, "pairs_built": built, "duplicates_removed": dups, "pairs": total},
        })
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1))
    dt = time.monotonic() - t0
    manifest["seconds"] = dt
    progress(f"wrote {out}: " + ", ".join(f"{s} {manifest['splits'][s]['rows']:,}" for s in SPLITS)
             + f" pairs · {len(skipped)} skipped · {dt:.1f} s ({total / dt:,.0f} pairs/s)", force=True)
    return manifest


def _report_skipped(infos: list, strict: bool) -> list:
    """The skipped items of every source, the first 20 printed; RaykdError with ``strict`` if any."""
    skipped = [s for info in infos for s in info.skipped]
    for s in skipped[:20]:
        print(f"[prepare] skipped {s.file}:{s.line}: {s.reason}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"[prepare] … and {len(skipped) - 20} more skipped items (listed in the manifest)", file=sys.stderr)
    if strict and skipped:
        raise RaykdError(f"--strict: {len(skipped)} bad item(s) in the input, first: "
                         f"{skipped[0].file}:{skipped[0].line}: {skipped[0].reason}")
    return skipped


def _split_rows(infos: list, records: list) -> tuple[dict, int, int]:
    """(rows per split as column lists, pairs built, exact duplicates removed): every dialogue's pairs
    in source order, an exact (question, answer) repeat dropped (the first kept), each dialogue's
    pairs in the split its id hashes to. Counts each source's kept pairs into its info."""
    rows = {s: {c: [] for c in COLUMNS[:5]} for s in SPLITS}
    seen: set[tuple[str, str]] = set()
    built = dups = 0
    for info, recs in zip(infos, records):
        for dialogue_id, department, pairs in recs:
            built += len(pairs)
            cols = rows[split_of(dialogue_id)]
            for k, (q, a) in enumerate(pairs):
                if (q, a) in seen:
                    dups += 1
                    continue
                seen.add((q, a))
                cols["pair_id"].append(f"{dialogue_id}#{k}")
                cols["dialogue_id"].append(dialogue_id)
                cols["department"].append(department)
                cols["question"].append(q)
                cols["answer"].append(a)
                info.pairs += 1
    return rows, built, dups


PARALLEL_MIN_BYTES = 8 << 20


def _source_pairs(source: tuple[str, str]) -> tuple[meddialog.SourceInfo, list]:
    """Read one source and build its cleaned pairs: (info, [(dialogue key, department, pairs)])."""
    info, dialogues = meddialog.read_source(*source)
    return info, [(d.key, d.department, meddialog.dialogue_pairs(d.turns)) for d in dialogues]


def _read_all(sources: list[tuple[str, str]], progress: Progress) -> tuple[list, list]:
    """Infos and per-source records, in source order; files are parsed in parallel processes when the
    input is large enough to repay their start-up."""
    size = sum(os.path.getsize(p) for p, fmt in sources if fmt != "hf" and os.path.isfile(p))
    workers = min(os.cpu_count() or 1, len(sources))
    results = []
    if workers > 1 and size >= PARALLEL_MIN_BYTES:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for r in pool.map(_source_pairs, sources):
                results.append(r)
                progress(f"read {len(results)}/{len(sources)} sources ({workers} processes)")
    else:
        for src in sources:
            results.append(_source_pairs(src))
            progress(f"read {len(results)}/{len(sources)} sources")
    progress(f"read {len(sources)} sources · {sum(len(r) for _, r in results):,} dialogues", force=True)
    return [i for i, _ in results], [r for _, r in results]


def _tokenizer(tmp: Path, settings: PrepareSettings, rows: dict, progress: Progress):
    """The study's tokenizer — trained on the train split (``train:V`` WordPiece, ``train-bpe:V`` byte-level BPE,
    on at most ``TOKENIZER_TRAIN_TEXTS`` evenly spaced texts) or loaded — saved to ``tmp/tokenizer``."""
    kind, spec = tokenization.parse_spec(settings.tokenizer)
    if kind in ("train", "train-bpe"):
        texts = rows["train"]["question"] + rows["train"]["answer"]
        texts = texts[:: -(-len(texts) // TOKENIZER_TRAIN_TEXTS)]  # evenly spaced, at most the cap
        what = "a WordPiece" if kind == "train" else "a byte-level BPE"
        progress(f"training {what} tokenizer (vocab {spec}) on {len(texts):,} train texts", force=True)
        tok = (tokenization.train_wordpiece if kind == "train" else tokenization.train_bpe)(texts, int(spec))
    else:
        tok = tokenization.load_tokenizer(str(spec))
    tok.model_max_length = settings.max_length
    tok.save_pretrained(str(tmp / "tokenizer"))
    return tok


def _id_column(lists: list[list[int]]):
    """Token id lists as one Arrow ``list<int32>`` column (offsets and values built with numpy)."""
    import numpy as np
    import pyarrow as pa

    lengths = np.fromiter(map(len, lists), dtype=np.int32, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _write(tmp: Path, settings: PrepareSettings, rows: dict, progress: Progress) -> dict:
    """Tokenize every split and write its shards under ``tmp`` (zstd Parquet, ``shard_rows`` rows each, sha256
    recorded); returns the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = _tokenizer(tmp, settings, rows, progress)
    schema = pa.schema([("pair_id", pa.string()), ("dialogue_id", pa.string()), ("department", pa.string()),
                        ("question", pa.string()), ("answer", pa.string()),
                        ("q_input_ids", pa.list_(pa.int32())), ("a_input_ids", pa.list_(pa.int32()))])
    splits: dict = {}
    departments: dict[str, int] = {}
    done = 0
    total = sum(len(rows[s]["pair_id"]) for s in SPLITS)
    for split in SPLITS:
        cols = rows[split]
        n = len(cols["pair_id"])
        (tmp / split).mkdir()
        shards = []
        for start in range(0, max(n, 1), settings.shard_rows):
            end = min(n, start + settings.shard_rows)
            q_ids = tokenization.encode_ids(tok, cols["question"][start:end], settings.max_length)
            a_ids = tokenization.encode_ids(tok, cols["answer"][start:end], settings.max_length)
            table = pa.Table.from_arrays(
                [pa.array(cols[c][start:end], pa.string()) for c in COLUMNS[:5]] + [_id_column(q_ids), _id_column(a_ids)],
                schema=schema)
            rel = f"{split}/part-{len(shards):05d}.parquet"
            pq.write_table(table, tmp / rel, compression="zstd")
            shards.append({"file": rel, "rows": end - start, "bytes": (tmp / rel).stat().st_size,
                           "sha256": meddialog.file_sha256(tmp / rel)})
            done += end - start
            progress(f"tokenized and wrote {done:,}/{total:,} rows")
        for d in cols["department"]:
            departments[d] = departments.get(d, 0) + 1
        splits[split] = {"rows": n, "dialogues": len(set(cols["dialogue_id"])), "shards": shards}
    return _manifest(settings, splits, departments, tok, tmp)


def _manifest(settings: PrepareSettings, splits: dict, departments: dict, tok, tmp: Path) -> dict:
    """The prepared directory's ``manifest.json`` content."""
    return {
        "format": FORMAT,
        "created_by": f"raykd {__version__}",
        "columns": list(COLUMNS),
        "split_rule": SPLIT_RULE,
        "splits": splits,
        "departments": dict(sorted(departments.items(), key=lambda kv: -kv[1])),
        "tokenizer": {"spec": settings.tokenizer, "path": "tokenizer", "vocab_size": len(tok),
                      "pad_token_id": tok.pad_token_id, "cls_token_id": tok.cls_token_id,
                      "sep_token_id": tok.sep_token_id, "mask_token_id": tok.mask_token_id,
                      "unk_token_id": tok.unk_token_id, "bos_token_id": tok.bos_token_id,
                      "eos_token_id": tok.eos_token_id, "special_ids": sorted(int(i) for i in tok.all_special_ids),
                      "sha256": tokenization.tokenizer_sha256(tmp / "tokenizer")},
        "max_length": settings.max_length,
        "shard_rows": settings.shard_rows,
    }


def load_manifest(prepared_dir: str | Path, deep: bool = False) -> dict:
    """Read and verify a prepared directory's manifest; returns it as a dict.

    Every shard must exist with the recorded size and row count (``deep`` also checks sha256), and
    the tokenizer must match its recorded hash. Raises RaykdError naming the first mismatch, so a
    tampered or partial directory is refused by every reader.
    """
    d = Path(prepared_dir)
    mpath = d / "manifest.json"
    if not mpath.exists():
        raise RaykdError(f"{d}: not a prepared directory (no manifest.json); run `python -m raykd.data prepare`")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RaykdError(f"{mpath}: unreadable manifest: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RaykdError(f"{mpath}: not a {FORMAT} manifest")
    import pyarrow.parquet as pq

    for split in SPLITS:
        info = manifest.get("splits", {}).get(split)
        if info is None:
            raise RaykdError(f"{mpath}: split {split!r} missing")
        if sum(s["rows"] for s in info["shards"]) != info["rows"]:
            raise RaykdError(f"{mpath}: split {split} row count does not add up over its shards")
        for shard in info["shards"]:
            p = d / shard["file"]
            if not p.exists():
                raise RaykdError(f"{p}: shard listed in the manifest is missing (partial or tampered directory)")
            if p.stat().st_size != shard["bytes"]:
                raise RaykdError(f"{p}: size differs from the manifest (tampered or partial shard)")
            try:
                rows = pq.ParquetFile(p).metadata.num_rows
            except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a damaged file
                raise RaykdError(f"{p}: unreadable Parquet shard: {e}") from None
            if rows != shard["rows"]:
                raise RaykdError(f"{p}: holds {rows} rows, the manifest says {shard['rows']}")
            if deep and meddialog.file_sha256(p) != shard["sha256"]:
                raise RaykdError(f"{p}: content hash differs from the manifest (tampered shard)")
        extra = sorted(set(p.name for p in (d / split).glob("*.parquet")) -
                       set(Path(s["file"]).name for s in info["shards"]))
        if extra:
            raise RaykdError(f"{d / split}: shard(s) not in the manifest: {', '.join(extra)}")
    tok_dir = d / manifest["tokenizer"]["path"]
    if not tok_dir.is_dir() or tokenization.tokenizer_sha256(tok_dir) != manifest["tokenizer"]["sha256"]:
        raise RaykdError(f"{tok_dir}: tokenizer missing or differs from the manifest")
    return manifest


def shard_paths(prepared_dir: str | Path, split: str, manifest: dict | None = None) -> list[str]:
    """Absolute paths of a split's Parquet shards, in order (verifies the directory first)."""
    manifest = manifest or load_manifest(prepared_dir)
    if split not in SPLITS:
        raise RaykdError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return [str(Path(prepared_dir).absolute() / s["file"]) for s in manifest["splits"][split]["shards"]]


def special_token_ids(prepared_dir: str | Path, manifest: dict) -> tuple[int, ...]:
    """Every special token id of the tokenizer the shards were made with (pad, [CLS], [SEP], [MASK],
    [UNK] and any other the tokenizer declares), sorted: from the manifest, or — for a directory
    prepared before the manifest recorded them — from the saved tokenizer itself."""
    t = manifest["tokenizer"]
    if "special_ids" in t:
        return tuple(int(i) for i in t["special_ids"])
    from raykd.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(Path(prepared_dir) / t["path"]))
    return tuple(sorted(int(i) for i in tok.all_special_ids))

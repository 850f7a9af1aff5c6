"""``python -m raykd.cache import``'s work, Ray-free: a teacher's top-k log-probs made elsewhere (axolotl,
DistillKit or raykd rows: ``raykd.data.logprob_sources``) turned into raykd's causal top-k cache for a
study's prepared data — the directory layout and manifest ``raykd.ray_layer.cache.causal_lm`` reads.

* **Matched by content**: a source row belongs to the prepared train pair whose prompt + response ids
  (the study's template) equal its ``input_ids``; never by position. Unmatched source rows and
  prepared pairs without a source row are counted and the first few shown; ``strict`` makes either
  fatal. A study refuses a partial cache (``raykd.ray_layer.inputs.imported_cache_entry``): its trials
  would train on other pairs than its references.
* **Checked before anything is kept**: every row (``check_row``: k, ids in the vocabulary and none
  twice, finite values, mass ≤ 1 + 1e-3; a record of another shape is named, never a traceback); the
  position convention on the first ``check_rows`` matched rows, before any conversion and again on a
  resumed import (``SourceCheck``: a source one position off is refused); a renormalised source not
  declared as such (or declared but not) only warns. Bad input raises ``RaykdError`` and leaves
  nothing behind.
* **Bounded memory, resumable**: sources are read a batch at a time (Parquet row groups, JSONL lines,
  an HF ``save_to_disk`` folder through ``datasets``, memory-mapped); converted rows are flushed to
  parts per source file and prepared shard under ``<out>.partial/`` every ``flush_bytes``, and a
  source file whose ``.done`` marker exists is skipped when the import runs again with the same
  inputs. The cache directory appears by one rename when complete."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from raykd.data import logprob_sources as S
from raykd.data.shards import shard_paths
from raykd.errors import RaykdError

FORMATS = ("axolotl", "distillkit", "raykd")
IMPORT_VERSION = 1
TOKEN_COLUMNS = ("pair_id", "department", "q_input_ids", "a_input_ids")


@dataclass
class ImportSettings:
    """What ``import_logprobs`` does: the source (``format``, ``source`` path), the temperature its
    log-probs were made at, whether its top-k was renormalised, the position convention of axolotl
    prepared rows, whether any mismatch is fatal, DistillKit's compression config for its compressed
    rows (``S.CompressionConfig``; distillkit only), and how it reads."""

    format: str
    source: str
    temperature: float = 1.0
    renormalized: bool = False
    alignment: str = "next"
    strict: bool = False
    compression: S.CompressionConfig | None = None
    batch_rows: int = 64
    check_rows: int = 256
    flush_bytes: int = 64 << 20
    examples: int = 3

    def __post_init__(self):
        if self.format not in FORMATS:
            raise RaykdError(f"--format {self.format!r}: one of {', '.join(FORMATS)}")
        if self.temperature <= 0:
            raise RaykdError(f"--temperature must be positive, got {self.temperature}")
        if self.alignment not in S.ALIGNMENTS:
            raise RaykdError(f"--alignment {self.alignment!r}: one of {', '.join(S.ALIGNMENTS)}")
        if self.compression is not None and self.format != "distillkit":
            raise RaykdError(f"--compression: only with --format distillkit (not {self.format})")


# ------------------------------------------------------------------------------------------ reading sources
def source_files(path: str | Path, fmt: str) -> list[tuple[str, Path]]:
    """The source's files as (kind, path), kind ∈ parquet | jsonl | hf | raykd, in a fixed order;
    RaykdError when there is nothing readable."""
    p = Path(path)
    if not p.exists():
        raise RaykdError(f"--from {p}: no such file or directory")
    if fmt == "raykd":
        if not (p / "manifest.json").exists():
            raise RaykdError(f"--from {p}: not a raykd cache directory (no manifest.json)")
        return [("raykd", f) for f in sorted((p / "train").glob("*.parquet"))]
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists()):
        return [("hf", p)]
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.suffix in (".parquet", ".jsonl"))
    out = [("parquet" if f.suffix == ".parquet" else "jsonl", f) for f in files]
    if not out:
        raise RaykdError(f"--from {p}: no .parquet / .jsonl files and not an HF save_to_disk folder")
    return out


def iter_batches(kind: str, path: Path, batch_rows: int) -> Iterator[list[dict]]:
    """The records of one source file, ``batch_rows`` at a time (bounded memory)."""
    if kind in ("parquet", "raykd"):
        import pyarrow.parquet as pq

        for b in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield b.to_pylist()
    elif kind == "jsonl":
        batch = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        batch.append(json.loads(line))
                    except ValueError as e:
                        raise RaykdError(f"{path}:{n}: not a JSON line ({e})") from None
                if len(batch) >= batch_rows:
                    yield batch
                    batch = []
        if batch:
            yield batch
    else:  # an HF save_to_disk folder: memory-mapped Arrow, read through datasets
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise RaykdError(f"{path}: a DatasetDict without a train split ({sorted(ds)})")
            ds = ds["train"]
        for cols in ds.iter(batch_size=batch_rows):
            yield [dict(zip(cols, vals)) for vals in zip(*cols.values())]


# ------------------------------------------------------------------------------------------ the prepared side
@dataclass
class PreparedIndex:
    """The study's train pairs by content: a 16-byte digest of the sequence → row numbers (train order),
    each row's shard and response [start, end) — ~100 bytes per pair, not the sequences."""

    rows: dict[bytes, list[int]] = field(default_factory=dict)
    shard: list[int] = field(default_factory=list)
    response: list[tuple[int, int]] = field(default_factory=list)
    template: dict | None = None  # the template's pieces, recorded in the cache's manifest

    @classmethod
    def build(cls, prepared: str, manifest: dict, template) -> "PreparedIndex":
        import pyarrow.parquet as pq

        idx = cls(template=template.as_dict())
        for s, path in enumerate(shard_paths(prepared, "train", manifest)):
            t = pq.read_table(path, columns=["q_input_ids", "a_input_ids"])
            for q, a in zip(t.column("q_input_ids").to_pylist(), t.column("a_input_ids").to_pylist()):
                seq, resp = S.prepared_sequence(template, q, a)
                idx.rows.setdefault(_digest(seq), []).append(len(idx.shard))
                idx.shard.append(s)
                idx.response.append(resp)
        return idx


def _digest(seq) -> bytes:
    return hashlib.blake2b(S.sequence_key(seq), digest_size=16).digest()


# ------------------------------------------------------------------------------------------ the import
class _Parts:
    """Converted rows buffered per prepared shard, flushed to ``parts/<file>-<chunk>-<shard>.parquet``."""

    def __init__(self, root: Path, file_no: int, flush_bytes: int):
        self.root, self.file_no, self.flush_bytes = root, file_no, flush_bytes
        self.buf: dict[int, list] = {}
        self.size, self.chunk = 0, 0

    def add(self, shard: int, row: int, cols: tuple[bytes, bytes, bytes]) -> None:
        self.buf.setdefault(shard, []).append((row, *cols))
        self.size += sum(len(c) for c in cols)
        if self.size >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for shard, rows in self.buf.items():
            cols = list(zip(*rows))
            table = pa.table({"row": pa.array(cols[0], pa.int64()),
                              **{n: pa.array(c, pa.binary()) for n, c in zip(("topk_ids", "topk_logp", "topk_tail"),
                                                                             cols[1:])}})
            pq.write_table(table, self.root / f"{self.file_no:05d}-{self.chunk:04d}-{shard:05d}.parquet")
        self.buf, self.size, self.chunk = {}, 0, self.chunk + 1


def import_key(settings: ImportSettings, files: list[tuple[str, Path]], manifest: dict, template: dict, vocab: int) -> str:
    """Content key of an import: the source files (name, size, modification time), the data, the
    template, the vocabulary and the settings that change what is stored (DistillKit's compression
    config where one is given)."""
    ident = [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for _, p in files]
    payload = {"files": ident, "data": manifest["key"], "template": template, "vocab": vocab, "version": IMPORT_VERSION,
               **{k: getattr(settings, k) for k in ("format", "temperature", "renormalized", "alignment", "strict")}}
    if settings.compression is not None:
        payload["compression"] = asdict(settings.compression)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def import_logprobs(settings: ImportSettings, prepared: str, manifest: dict, template, out: Path,
                    log: Callable[[str], None] = print, map_files=None) -> dict:
    """Import ``settings.source`` into the cache directory ``out`` for the train split of ``prepared``
    (its ``manifest``) under ``template`` (a ``CausalTemplate``). Returns the cache's manifest
    (existing: reused). RaykdError on bad input, nothing left behind. ``map_files(convert_file, jobs,
    index)`` yields each ``FileJob``'s counts in order: how the files are spread (the command's
    ``--workers`` runs them on Ray Data; None: one after the other here)."""
    from raykd.atomic import atomic_directory

    if (out / "manifest.json").exists():
        log(f"[import] reusing {out}")
        return json.loads((out / "manifest.json").read_text())
    vocab = int(manifest["tokenizer"]["vocab_size"])
    files = source_files(settings.source, settings.format)
    check_exported_tokenizer(settings.source, prepared, manifest)
    partial = out.parent / (out.name + ".partial")
    ident = json.loads(json.dumps({"settings": asdict(settings), "key": out.name}))  # as read back (tuples: lists)
    if partial.exists() and _read_json(partial / "import.json") != ident:
        shutil.rmtree(partial)  # another import was interrupted here: start over
    (partial / "parts").mkdir(parents=True, exist_ok=True)
    (partial / "import.json").write_text(json.dumps(ident))
    index = PreparedIndex.build(prepared, manifest, template)
    log(f"[import] {settings.format} rows from {settings.source} ({len(files)} file(s)) → {out}; "
        f"{len(index.shard):,} train pairs to match")
    try:
        stats = _convert(settings, files, index, vocab, partial, log, map_files)
        with atomic_directory(out) as tmp:
            meta = _assemble(settings, partial / "parts", prepared, manifest, index, tmp, stats, vocab, out.name, log)
    except RaykdError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return meta


def _read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _source_row(settings: ImportSettings, rec: dict, raykd_meta: dict | None, template, where: str) -> S.SourceRow:
    """One record as a ``SourceRow``; RaykdError naming ``where`` for a record of another shape (a missing
    column, a null position, ragged rows) — never a traceback."""
    try:
        if settings.format == "axolotl":
            return S.read_axolotl(rec, settings.alignment)
        if settings.format == "distillkit":
            return S.read_distillkit(rec, settings.compression)
        seq, resp = S.prepared_sequence(template, rec["q_input_ids"], rec["a_input_ids"])
        return S.read_raykd(rec, np.asarray(seq), resp[0], int(raykd_meta["topk"]),
                            [float(t) for t in raykd_meta["temperatures"]], settings.temperature)
    except RaykdError as e:
        raise RaykdError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise RaykdError(f"{where}: not a {settings.format} row ({type(e).__name__}: {e}; it has "
                         f"{sorted(rec) if isinstance(rec, dict) else type(rec).__name__})") from None


def _records(settings: ImportSettings, numbered, raykd_meta, template, vocab: int):
    """(file number, path, row number, checked ``SourceRow``) over every row of the ``numbered`` files
    ((file number, kind, path) triples), in order; RaykdError naming the first bad row."""
    for file_no, kind, path in numbered:
        n = 0
        for batch in iter_batches(kind, path, settings.batch_rows):
            for rec in batch:
                n += 1
                row = _source_row(settings, rec, raykd_meta, template, f"{path}: row {n}")
                bad = S.check_row(row, vocab)
                if bad:
                    raise RaykdError(f"{path}: row {n}: {bad}")
                yield file_no, path, n, row


def _precheck(settings: ImportSettings, numbered, index: "PreparedIndex", vocab: int, raykd_meta, template,
              log) -> None:
    """Before anything is converted (and again on a resumed import): the position convention and the
    declared renormalisation on the first ``check_rows`` matched rows, accumulated without keeping them."""
    check = S.SourceCheck()
    for _, _, _, row in _records(settings, numbered, raykd_meta, template, vocab):
        if _digest(row.input_ids) in index.rows:
            check.add(row)
            if check.rows >= settings.check_rows:
                break
    if check.rows == 0:
        return  # nothing matches: the assembly says so
    S.check_alignment(check.rates(), f"{settings.format} source {settings.source}")
    share = check.renormalized_share()
    if settings.renormalized and share < 0.9:
        log(f"[import] warning: declared --renormalized, but only {share:.0%} of the checked positions hold a top-k "
            "mass of 1: the tail bucket is stored empty anyway")
    elif not settings.renormalized and share > 0.9:
        log(f"[import] warning: {share:.0%} of the checked positions hold a top-k mass of 1 (a renormalised source, "
            "e.g. axolotl's prepared rows?): declare --renormalized; the tail stored is then empty, not log(1 − Σp)")


def _convert(settings: ImportSettings, files, index: PreparedIndex, vocab: int, partial: Path, log,
             map_files=None) -> dict:
    """Every source file → parts (skipping files already done, each marked by an atomically written
    ``.done`` with its counts) through ``map_files(convert_file, jobs, index)`` (default: in order, here);
    returns the totals."""
    raykd_meta = _read_json(Path(settings.source) / "manifest.json") if settings.format == "raykd" else None
    template = None
    if settings.format == "raykd":
        from raykd.data.template import CausalTemplate

        if not (raykd_meta or {}).get("template"):
            raise RaykdError(f"{settings.source}: its manifest records no template (made before imports were possible)")
        template = CausalTemplate.from_dict(raykd_meta["template"])
    numbered = [(i, kind, path) for i, (kind, path) in enumerate(files)]
    _precheck(settings, numbered, index, vocab, raykd_meta, template, log)
    keys = ("source_rows", "matched", "unmatched", "missing_positions")
    stats = {**{k: 0 for k in keys}, "examples": [], "k": None}
    done = {i: partial / "parts" / f"{i:05d}.done" for i in range(len(files))}
    todo = []
    for i, kind, path in numbered:
        prev = _read_json(done[i])
        if prev is None:
            todo.append((i, kind, path))
            continue
        for k in keys:
            stats[k] += prev[k]
        stats["examples"] = (stats["examples"] + prev.get("examples", []))[:settings.examples]
        stats["k"] = stats["k"] or prev.get("k")
        log(f"[import] {path.name}: done before ({prev['matched']:,} rows), skipped")
    jobs = [FileJob(settings, i, kind, str(path), vocab, str(partial / "parts"), raykd_meta) for i, kind, path in todo]
    for job, mine in zip(jobs, (map_files or _in_order)(convert_file, jobs, index)):
        for k in keys:
            stats[k] += mine[k]
        stats["examples"] = (stats["examples"] + mine["examples"])[:settings.examples]
        if mine["k"] and stats["k"] and mine["k"] != stats["k"]:
            raise RaykdError(f"{job.path}: k = {mine['k']}, other files k = {stats['k']}: k differs between rows "
                             "(one k per source)")
        stats["k"] = stats["k"] or mine["k"]
        log(f"[import] {Path(job.path).name}: {mine['source_rows']:,} rows, {mine['matched']:,} matched")
    return stats


@dataclass
class FileJob:
    """One source file's conversion (``convert_file``): picklable, for a worker elsewhere."""

    settings: ImportSettings
    file_no: int
    kind: str
    path: str
    vocab: int
    parts: str
    raykd_meta: dict | None = None


def _in_order(fn, jobs: list[FileJob], index: "PreparedIndex"):
    """The default file mapper: one file after the other, here."""
    for job in jobs:
        yield fn(job, index)


def convert_file(job: FileJob, index: "PreparedIndex") -> dict:
    """Convert one source file into parts under ``job.parts`` and mark it done (atomically); returns its
    counts (source_rows, matched, unmatched, missing_positions), its k and a few unmatched examples.
    RaykdError naming the first bad row."""
    settings, path = job.settings, Path(job.path)
    template = None
    if settings.format == "raykd":
        from raykd.data.template import CausalTemplate

        template = CausalTemplate.from_dict(job.raykd_meta["template"])
    parts = _Parts(Path(job.parts), job.file_no, settings.flush_bytes)
    mine = {"source_rows": 0, "matched": 0, "unmatched": 0, "missing_positions": 0, "examples": [], "k": None}
    for _, _, n, row in _records(settings, [(job.file_no, job.kind, path)], job.raykd_meta, template, job.vocab):
        mine["source_rows"] += 1
        if row.valid.any():
            mine["k"] = mine["k"] or row.ids.shape[1]
            if row.ids.shape[1] != mine["k"]:
                raise RaykdError(f"{path}: row {n}: k = {row.ids.shape[1]}, earlier rows k = {mine['k']}: k "
                                 "differs between rows (one k per source)")
        targets = index.rows.get(_digest(row.input_ids), [])
        if not targets:
            mine["unmatched"] += 1
            if len(mine["examples"]) < settings.examples:
                mine["examples"].append(f"{path.name} row {n}: {len(row.input_ids)} tokens, starting "
                                        f"{row.input_ids[:8].tolist()}")
            continue
        for r in targets:
            cols = S.cache_row(row, index.response[r], settings.temperature, settings.renormalized)
            if cols is None:
                mine["missing_positions"] += 1
                continue
            parts.add(index.shard[r], r, cols)
        mine["matched"] += 1
    parts.flush()
    _write_done(Path(job.parts) / f"{job.file_no:05d}.done", mine)
    return mine


def _write_done(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)  # atomic: a marker is whole or absent


def _assemble(settings: ImportSettings, parts: Path, prepared: str, manifest: dict, index: PreparedIndex, tmp: Path,
              stats: dict, vocab: int, key: str, log) -> dict:
    """One cache shard per prepared train shard (its matched rows, in train order, with the token
    columns) and the manifest; RaykdError under ``strict`` on any mismatch or when nothing matched."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp / "train").mkdir(parents=True)
    files, matched_rows, resp_tokens, offset = {}, 0, 0, 0
    for s, path in enumerate(shard_paths(prepared, "train", manifest)):
        tokens = pq.read_table(path, columns=list(TOKEN_COLUMNS))
        got = [pq.read_table(p) for p in sorted(parts.glob(f"*-{s:05d}.parquet"))]
        if got:  # kept in Arrow: one shard's cache rows at a time, no Python copies of the bytes
            t = pa.concat_tables(got)
            rows = t.column("row").to_numpy()
            order = np.argsort(rows, kind="stable")
            first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]  # one row per pair (a source may repeat)
            t = t.take(pa.array(first))
            table = tokens.take(pa.array(t.column("row").to_numpy() - offset))
            for c in ("topk_ids", "topk_logp", "topk_tail"):
                table = table.append_column(c, t.column(c))
            name = f"part-{s:05d}.parquet"
            pq.write_table(table, tmp / "train" / name, compression="zstd", row_group_size=1024)
            files[name] = {"rows": table.num_rows, "bytes": (tmp / "train" / name).stat().st_size}
            matched_rows += table.num_rows
            resp_tokens += sum(index.response[r][1] - index.response[r][0] for r in t.column("row").to_pylist())
        offset += tokens.num_rows
    total = len(index.shard)
    missing = total - matched_rows
    summary = (f"{stats['source_rows']:,} source rows: {stats['matched']:,} matched, {stats['unmatched']:,} unmatched"
               f"{' (e.g. ' + '; '.join(stats['examples']) + ')' if stats['examples'] else ''}; "
               f"{matched_rows:,} of {total:,} train pairs have teacher log-probs"
               + (f" ({stats['missing_positions']:,} lacked a stored row for some response token)"
                  if stats["missing_positions"] else ""))
    if matched_rows == 0:
        raise RaykdError(f"import: no row matched the study's train pairs — {summary} (another tokenizer, template or "
                         "data? rows are matched by their prompt + response token ids)")
    if settings.strict and (stats["unmatched"] or missing):
        raise RaykdError(f"import --strict: {summary}")
    log(f"[import] {summary}" + ("" if not missing else "; a study refuses a cache that lacks train pairs (its "
                                                         "trials would train on other pairs than its references)"))
    meta = {"key": key, "version": 1, "family": "causal_lm", "data_key": manifest["key"],
            "teacher": f"imported:{settings.format}:{settings.source}", "layers": [], "hidden": None,
            "topk": stats["k"],
            "temperatures": [settings.temperature], "vocab": vocab, "response_tokens": resp_tokens,
            "template": index.template,
            "rows": matched_rows, "files": files,
            "imported": {**asdict(settings), "source_rows": stats["source_rows"], "matched": stats["matched"],
                         "unmatched": stats["unmatched"], "train_pairs": total, "pairs_with_logprobs": matched_rows}}
    (tmp / "manifest.json").write_text(json.dumps(meta, indent=1))
    return meta


# ------------------------------------------------------------------------------------------ export
EXPORT_META = "raykd_export.json"


def _axolotl_schema():
    import pyarrow as pa

    ids, lists = pa.list_(pa.int64()), pa.list_(pa.list_(pa.int64()))
    return pa.schema([("input_ids", ids), ("labels", ids), ("target_token_ids", lists),
                      ("target_logprobs", pa.list_(pa.list_(pa.float32()))), ("target_mask", lists)])


def export_axolotl(cache_dir: str | Path, prepared: str, manifest: dict, template, out: str | Path,
                   temperature: float | None = None, log: Callable[[str], None] = print) -> dict:
    """Write raykd's causal top-k cache ``cache_dir`` as axolotl KD rows under ``out`` (one Parquet file
    per cache shard): ``input_ids`` (prompt + response under ``template``), ``labels`` (-100 on the
    prompt), ``target_token_ids`` / ``target_logprobs`` / ``target_mask`` [L][k] — axolotl's current
    convention, row j over token j + 1, raw log-probs at ``temperature`` (one of the cache's; default its
    first), padding rows id 0 / −1e9 / mask 0 — and ``raykd_export.json`` (k, temperature, alignment, the
    tokenizer's fingerprint). Returns that metadata. RaykdError for a cache without top-k logits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raykd.atomic import atomic_directory
    from raykd.data.tokenizer import tokenizer_sha256

    cache_dir, out = Path(cache_dir), Path(out)
    meta = _read_json(cache_dir / "manifest.json")
    if not meta or not meta.get("topk"):
        raise RaykdError(f"{cache_dir}: not a raykd cache with top-k logits")
    temps = [float(t) for t in meta["temperatures"]]
    temperature = temps[0] if temperature is None else float(temperature)
    if temperature not in temps:
        raise RaykdError(f"export: temperature {temperature} is not cached in {cache_dir} (it has {temps})")
    k = int(meta["topk"])
    renormalized = bool(meta.get("imported", {}).get("renormalized", False))  # its tail was not the teacher's
    info = {"format": "axolotl", "alignment": "next", "k": k, "temperature": temperature, "renormalized": renormalized,
            "source_cache": str(cache_dir), "data_key": meta.get("data_key"),
            "tokenizer_sha256": tokenizer_sha256(Path(prepared) / manifest["tokenizer"]["path"])}
    rows = 0
    with atomic_directory(out) as tmp:
        for name in sorted(meta["files"]):
            writer = None
            for batch in pq.ParquetFile(cache_dir / "train" / name).iter_batches(batch_size=64):
                recs = []
                for r in batch.to_pylist():
                    seq, (a, b) = S.prepared_sequence(template, r["q_input_ids"], r["a_input_ids"])
                    src = S.read_raykd(r, np.asarray(seq), a, k, temps, temperature)
                    ids = np.zeros((len(seq), k), np.int64)
                    logp = np.full((len(seq), k), -1e9)
                    mask = np.zeros((len(seq), k), np.int64)
                    ids[a - 1:b - 1], logp[a - 1:b - 1], mask[a - 1:b - 1] = src.ids, src.logp, 1
                    recs.append({"input_ids": seq, "labels": [-100] * a + seq[a:], "target_token_ids": ids.tolist(),
                                 "target_logprobs": logp.astype(np.float32).tolist(), "target_mask": mask.tolist()})
                table = pa.Table.from_pylist(recs, schema=_axolotl_schema())
                writer = writer or pq.ParquetWriter(tmp / name, table.schema, compression="zstd")
                writer.write_table(table)
                rows += len(recs)
            if writer is not None:
                writer.close()
        info["rows"] = rows
        (tmp / EXPORT_META).write_text(json.dumps(info, indent=1))
    log(f"[export] {rows:,} rows in axolotl's layout → {out}")
    return info


def check_exported_tokenizer(source: str | Path, prepared: str, manifest: dict) -> None:
    """RaykdError when ``source`` carries a raykd export's metadata naming another tokenizer than the
    prepared data's (by its files' sha256); nothing to check otherwise (rows are matched by content)."""
    from raykd.data.tokenizer import tokenizer_sha256

    p = Path(source)
    info = _read_json((p if p.is_dir() else p.parent) / EXPORT_META)
    if info and info.get("tokenizer_sha256"):
        mine = tokenizer_sha256(Path(prepared) / manifest["tokenizer"]["path"])
        if info["tokenizer_sha256"] != mine:
            raise RaykdError(f"{source}: made with another tokenizer (sha256 {info['tokenizer_sha256'][:12]}…, the "
                             f"study's {mine[:12]}…): its ids mean other tokens")

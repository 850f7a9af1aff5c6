"""Parse MedDialog-CN in the forms people have it into dialogues, and dialogues into QA pairs.

Three raw forms (README, *Data*):
- raw txt, one file per year: ``id=N`` records with Doctor faculty / Description / Dialogue /
  Diagnosis and suggestions sections; old and new Description label schemes; UTF-8, UTF-8 with BOM
  or GB2312/GBK; LF or CRLF;
- processed JSON: a list of dialogues, each a list of ``"病人：…"`` / ``"医生：…"`` strings;
- an HF ``datasets`` dataset in the ``medical_dialog`` zh schema (``hf:PATH_OR_ID``).

Bad records never stop the rest: each is reported as a :class:`Skipped` with file and line.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from raykd.errors import RaykdError

PATIENT, DOCTOR = "patient", "doctor"
UNKNOWN_DEPARTMENT = "unknown"
_SPEAKERS = {"病人": PATIENT, "医生": DOCTOR}

SECTION_HEADERS = ("Doctor faculty", "Description", "Dialogue", "Diagnosis and suggestions")
_RECORD_RE = re.compile(r"^id=(\d+)$")
_SPEAKER_LINE_RE = re.compile(r"^(病人|医生)[：:]$")
_SPEAKER_PREFIX_RE = re.compile(r"^\s*(病人|医生)[：:]")

# Description labels of both schemes (old: 2010–~2015, new: later years) → the field they carry.
DESCRIPTION_LABELS = {
    "疾病": "disease",
    "病情描述（发病时间、主要症状、就诊医院等）": "description",
    "病情描述": "description",
    "曾经治疗情况和效果": "treatment",
    "想得到怎样的帮助": "help",
    "希望获得的帮助": "help",
    "患病多久": "duration",
    "过敏史": "allergies",
    "既往病史": "history",
}
_LABEL_RE = re.compile(
    "^(" + "|".join(re.escape(k) for k in sorted(DESCRIPTION_LABELS, key=len, reverse=True)) + r")[：:]\s*(.*)$"
)
# The patient's opening turn is built from these Description fields, in this order.
OPENING_FIELDS = ("disease", "description", "help")


@dataclass
class Dialogue:
    """One consultation: a stable key, its department and its turns in order (raw, uncleaned text);
    ``source`` is the file it came from and ``line`` where it starts (row number for HF)."""

    key: str
    department: str
    turns: list[tuple[str, str]]
    source: str
    line: int


@dataclass
class Skipped:
    """An input item that was not used, with where it is and why."""

    file: str
    line: int
    reason: str

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "reason": self.reason}


@dataclass
class SourceInfo:
    """What one input source held: its format, detected encoding, content hash and record counts."""

    file: str
    format: str
    encoding: str | None
    sha256: str
    records: int = 0
    pairs: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"file": self.file, "format": self.format, "encoding": self.encoding, "sha256": self.sha256,
                "records": self.records, "pairs": self.pairs, "skipped": len(self.skipped)}


# ---------------------------------------------------------------------------------------------- cleaning
_WS_CONTROLS = re.compile(r"[\t\n\r\v\f\x1c-\x1f\x85\u2028\u2029]")
_DROP = re.compile(
    "[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u180e"
    "\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffd]"
)
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Return ``text`` NFKC-normalised, without control / zero-width / replacement characters, with
    whitespace collapsed to single spaces and stripped."""
    text = unicodedata.normalize("NFKC", text)
    text = _WS_CONTROLS.sub(" ", text)
    text = _DROP.sub("", text)
    return _SPACES.sub(" ", text).strip()


# ---------------------------------------------------------------------------------------------- pairs
def dialogue_pairs(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return the (question, answer) pairs of a dialogue, cleaned.

    Consecutive turns of one speaker are merged (joined by a space); every patient turn is paired
    with the doctor turn that follows it. Pairs with an empty side after cleaning are dropped.
    """
    merged: list[list] = []
    for speaker, text in turns:
        if merged and merged[-1][0] == speaker:
            merged[-1][1].append(text)
        else:
            merged.append([speaker, [text]])
    pairs = []
    for (s1, q), (s2, a) in zip(merged, merged[1:]):
        if s1 == PATIENT and s2 == DOCTOR:
            q, a = clean_text(" ".join(q)), clean_text(" ".join(a))
            if q and a:
                pairs.append((q, a))
    return pairs


# ---------------------------------------------------------------------------------------------- encodings
def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _lines_of(data: bytes) -> list[bytes]:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def decode_text(data: bytes) -> tuple[list[str | None], str]:
    """Decode a raw file's bytes into lines, detecting the encoding per file.

    Returns (lines, encoding). A line that is not valid in the detected encoding is ``None``
    (the caller reports it and drops its record), so no U+FFFD ever reaches the output.
    Order: BOM (UTF-8 / UTF-16) → strict UTF-8 → UTF-8 line by line when most non-ASCII lines
    are UTF-8 (a damaged UTF-8 file is never re-read as GB mojibake) → strict GBK (GB2312 is a
    subset) → strict GB18030 (only if the result is mostly CJK/ASCII) → GB18030 line by line.
    """
    for bom, enc in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return _split(data.decode(enc)), enc
            except UnicodeDecodeError:
                break
    if b"\x00" in data:
        raise UnicodeError("NUL bytes: a binary file, not text")
    try:
        return _split(data.decode("utf-8")), "utf-8"
    except UnicodeDecodeError:
        pass
    raw_lines = _lines_of(data)
    non_ascii = [ln for ln in raw_lines if not ln.isascii()]
    utf8_ok = sum(1 for ln in non_ascii if _valid(ln, "utf-8"))
    if utf8_ok * 2 < len(non_ascii):  # not UTF-8 with a few damaged lines: try the GB family whole
        for enc in ("gbk", "gb18030"):
            try:
                text = data.decode(enc)
            except UnicodeDecodeError:
                continue
            if _looks_like_cjk_text(text):  # GB18030 decodes almost any bytes: demand real text
                return _split(text), enc
            break
    enc = "utf-8" if utf8_ok * 2 >= len(non_ascii) else "gb18030"
    if enc == "utf-8" and raw_lines and raw_lines[0].startswith(codecs.BOM_UTF8):
        raw_lines[0] = raw_lines[0][len(codecs.BOM_UTF8):]
    lines: list[str | None] = []
    for ln in raw_lines:
        try:
            lines.append(ln.decode(enc))
        except UnicodeDecodeError:
            lines.append(None)
    if sum(1 for ln in lines if ln is None) * 2 > max(1, len(non_ascii)):
        raise UnicodeError(f"not decodable as UTF-8 or GB18030 ({enc} fails on most lines)")
    return lines, enc + " (with undecodable lines)"


def _split(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _valid(b: bytes, enc: str) -> bool:
    try:
        b.decode(enc)
        return True
    except UnicodeDecodeError:
        return False


def _looks_like_cjk_text(text: str) -> bool:
    """True when a decoded text is mostly CJK / ASCII printable, not binary noise."""
    sample = text[:20000]
    if not sample:
        return True
    good = sum(1 for c in sample if c.isascii() or "\u4e00" <= c <= "\u9fff" or "\u3000" <= c <= "\u303f"
               or "\uff00" <= c <= "\uffef")
    return good / len(sample) > 0.9


# ---------------------------------------------------------------------------------------------- raw txt
def _opening_turn(fields: dict[str, list[str]]) -> str:
    parts = [" ".join(fields[f]) for f in OPENING_FIELDS if fields.get(f)]
    return " ".join(p for p in parts if p.strip())


def parse_raw_txt(lines: list[str | None], name: str) -> Iterator[Dialogue | Skipped]:
    """Yield the dialogues (and skipped records) of a raw MedDialog-CN txt file's decoded lines.

    ``name`` is the file's base name; a dialogue's key is ``name#id``.
    """
    record: dict | None = None
    stray_line = 0
    for i, raw in enumerate(lines, 1):
        if raw is None:
            if record is not None:
                record["bad_line"] = record["bad_line"] or i
            else:
                yield Skipped(name, i, "undecodable bytes outside a record")
            continue
        line = raw.strip()
        m = _RECORD_RE.match(line)
        if m:
            done = _finish_record(record, name)
            if done is not None:
                yield done
            record = {"id": m.group(1), "line": i, "department": UNKNOWN_DEPARTMENT, "section": None,
                      "fields": {}, "label": None, "turns": [], "pending_speaker": 0,
                      "dialogue_seen": False, "bad_line": 0, "faculty_done": False}
        elif record is None:
            if line and not stray_line:
                stray_line = i
                yield Skipped(name, i, "text before the first id= record")
        else:
            _record_line(record, line, i)
    done = _finish_record(record, name)
    if done is not None:
        yield done
    if record is None and not stray_line:
        yield Skipped(name, 1, "no id= record found (not a MedDialog-CN raw txt file?)")


def _finish_record(rec: dict | None, name: str) -> Dialogue | Skipped | None:
    """The dialogue a finished raw record holds, or why it is skipped (None: no record yet)."""
    if rec is None:
        return None
    if rec["bad_line"]:
        return Skipped(name, rec["bad_line"], "undecodable bytes in record")
    if rec["pending_speaker"]:
        return Skipped(name, rec["pending_speaker"], "truncated record: speaker line without an utterance")
    if not rec["dialogue_seen"]:
        return Skipped(name, rec["line"], "truncated record: no Dialogue block")
    opening = _opening_turn(rec["fields"])
    turns = ([(PATIENT, opening)] if opening else []) + [(s, " ".join(t)) for s, t in rec["turns"]]
    return Dialogue(f"{name}#{rec['id']}", rec["department"], turns, name, rec["line"])


def _record_line(record: dict, line: str, i: int) -> None:
    """Fold line ``i`` (stripped) of a raw record into it: a section header, the doctor's faculty
    (the department), a description field, or a dialogue speaker line or utterance."""
    if line in SECTION_HEADERS:
        record["section"] = line
        record["label"] = None
        if line == "Dialogue":
            record["dialogue_seen"] = True
        return
    section = record["section"]
    if section == "Doctor faculty":
        if line and not record["faculty_done"]:
            record["department"] = line.split()[-1]
            record["faculty_done"] = True
    elif section == "Description":
        if not line:
            record["label"] = None
            return
        lm = _LABEL_RE.match(line)
        if lm:
            record["label"] = DESCRIPTION_LABELS[lm.group(1)]
            record["fields"].setdefault(record["label"], [])
            if lm.group(2):
                record["fields"][record["label"]].append(lm.group(2))
        elif record["label"]:
            record["fields"][record["label"]].append(line)
    elif section == "Dialogue":
        sm = _SPEAKER_LINE_RE.match(line)
        if sm:
            if record["pending_speaker"]:  # speaker line followed directly by another: empty turn
                record["turns"].pop()
            record["turns"].append((_SPEAKERS[sm.group(1)], []))
            record["pending_speaker"] = i
        elif line and record["turns"]:  # utterance text with no speaker line before it: unattributable
            record["turns"][-1][1].append(line)
            record["pending_speaker"] = 0


# ---------------------------------------------------------------------------------------------- JSON
def _turns_from_prefixed(utterances: list) -> list[tuple[str, str]] | str:
    """Turns from ``"病人：…"`` strings, or the reason they cannot be read."""
    turns = []
    for k, u in enumerate(utterances):
        if not isinstance(u, str):
            return f"utterance {k} is {type(u).__name__}, not a string"
        m = _SPEAKER_PREFIX_RE.match(u)
        if not m:
            return f"utterance {k} does not start with 病人： or 医生："
        turns.append((_SPEAKERS[m.group(1)], u[m.end():]))
    return turns


def parse_processed_json(text: str, name: str) -> Iterator[Dialogue | Skipped]:
    """Yield the dialogues of a processed MedDialog-CN JSON file (a list of lists of prefixed strings).

    Elements are decoded one by one so a wrong element or a truncated file costs only what is bad;
    each problem is reported with its line. A dialogue's key is ``name#index``.
    """
    dec = json.JSONDecoder()
    line_of = lambda pos: text.count("\n", 0, pos) + 1  # noqa: E731
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        yield Skipped(name, line_of(pos), "JSON of the wrong shape: expected a list of dialogues")
        return
    pos = _skip_ws(text, pos + 1)
    index = 0
    while pos < len(text) and text[pos] != "]":
        start = pos
        try:
            item, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield Skipped(name, e.lineno, f"invalid or truncated JSON: {e.msg}")
            return
        if not isinstance(item, list):
            yield Skipped(name, line_of(start), f"dialogue {index} is a {type(item).__name__}, not a list of utterances")
        else:
            turns = _turns_from_prefixed(item)
            if isinstance(turns, str):
                yield Skipped(name, line_of(start), f"dialogue {index}: {turns}")
            else:
                yield Dialogue(f"{name}#{index}", UNKNOWN_DEPARTMENT, turns, name, line_of(start))
        index += 1
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos < len(text) and text[pos] != "]":
            yield Skipped(name, line_of(pos), "invalid JSON: expected ',' or ']' between dialogues")
            return
    if pos >= len(text):
        yield Skipped(name, line_of(len(text)), "truncated JSON: the list is not closed")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


# ---------------------------------------------------------------------------------------------- HF datasets
def _speaker_names(features) -> list[str] | None:
    """The ClassLabel names of ``dialogue_turns.speaker``, if the speaker is a ClassLabel.

    Handles every spelling: ``Sequence({...})`` (old datasets), a dict of ``List`` (datasets ≥ 4)
    and ``List({...})``."""
    def unwrap(f):
        while hasattr(f, "feature") and not hasattr(f, "names"):
            f = f.feature
        return f[0] if isinstance(f, list) and f else f

    inner = unwrap(features.get("dialogue_turns"))
    speaker = unwrap(inner.get("speaker")) if isinstance(inner, dict) else None
    return list(speaker.names) if hasattr(speaker, "names") else None


def _hf_turns(turns, names: list[str] | None) -> list[tuple[str, str]] | str:
    if isinstance(turns, dict):  # Sequence of a dict is stored column-wise
        turns = [dict(zip(turns, vals)) for vals in zip(*turns.values())]
    out = []
    for k, t in enumerate(turns or []):
        speaker, utt = t.get("speaker"), t.get("utterance")
        if isinstance(speaker, int) and names is not None and 0 <= speaker < len(names):
            speaker = names[speaker]
        if speaker not in _SPEAKERS or not isinstance(utt, str):
            return f"turn {k}: speaker {speaker!r} is not 病人/医生"
        m = _SPEAKER_PREFIX_RE.match(utt)
        out.append((_SPEAKERS[speaker], utt[m.end():] if m else utt))
    return out


def load_hf(spec: str):
    """Load an HF dataset from a ``save_to_disk`` folder or a hub id; returns a list of (split, Dataset)."""
    import datasets

    try:
        if os.path.isdir(spec):
            ds = datasets.load_from_disk(spec)
        else:
            ds = datasets.load_dataset(spec, "zh")
    except Exception as e:  # the datasets library raises many types for a bad path / unreachable hub
        raise RaykdError(f"hf:{spec}: cannot load the dataset: {type(e).__name__}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        return list(ds.items())
    return [("data", ds)]


def parse_hf(splits, name: str) -> Iterator[Dialogue | Skipped]:
    """Yield the dialogues of an HF ``medical_dialog`` (zh) dataset: ``dialogue_turns`` with a
    ``speaker`` (病人/医生, string or ClassLabel) and ``utterance``; or ``processed.zh``'s
    ``utterances`` (prefixed strings). Keys: ``file_name:dialogue_id`` (or ``dialogue_id``)."""
    for split, ds in splits:
        names = _speaker_names(ds.features)
        cols = set(ds.column_names)
        if "dialogue_turns" not in cols and "utterances" not in cols:
            yield Skipped(name, 0, f"split {split}: no dialogue_turns or utterances column (columns: {sorted(cols)})")
            continue
        for row_index, row in enumerate(ds):
            if "dialogue_turns" in cols:
                turns = _hf_turns(row["dialogue_turns"], names)
            else:
                turns = _turns_from_prefixed(row["utterances"])
            did = row.get("dialogue_id", f"{split}-{row_index}")
            key = f"{row['file_name']}#{did}" if row.get("file_name") else f"{did}"
            if isinstance(turns, str):
                yield Skipped(name, row_index + 1, f"split {split} row {row_index}: {turns}")
                continue
            yield Dialogue(key, UNKNOWN_DEPARTMENT, turns, name, row_index + 1)


def hf_sha256(spec: str) -> str:
    """Content hash of an HF dataset folder (all its files) or, for a hub id, of the id."""
    h = hashlib.sha256()
    if os.path.isdir(spec):
        for p in sorted(Path(spec).rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(spec)).encode())
                h.update(file_sha256(p).encode())
    else:
        h.update(spec.encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- sources
RAW_SUFFIXES = {".txt": "txt", ".json": "json"}


def list_sources(paths: list[str]) -> list[tuple[str, str]]:
    """Expand the ``--raw`` arguments into (path, format) in a stable order.

    Directories are read recursively (files sorted by relative path); ``hf:X`` names an HF dataset.
    Raises RaykdError for a path that does not exist or an input with no readable file.
    """
    out: list[tuple[str, str]] = []
    for p in paths:
        if p.startswith("hf:"):
            out.append((p[3:], "hf"))
            continue
        path = Path(p)
        if not path.exists():
            raise RaykdError(f"--raw {p}: no such file or directory")
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
                out.append((str(path), "hf"))
                continue
            found = [f for f in sorted(path.rglob("*")) if f.is_file() and f.suffix.lower() in RAW_SUFFIXES]
            if not found:
                raise RaykdError(f"--raw {p}: directory holds no .txt or .json file")
            out.extend((str(f), RAW_SUFFIXES[f.suffix.lower()]) for f in found)
        else:
            out.append((str(path), RAW_SUFFIXES.get(path.suffix.lower(), "txt")))
    if not out:
        raise RaykdError("--raw: no input given")
    return out


def read_source(path: str, fmt: str) -> tuple[SourceInfo, list[Dialogue]]:
    """Read one source; returns its info (with skipped items) and its dialogues in source order."""
    if fmt == "hf":
        info = SourceInfo(f"hf:{path}", "hf", None, hf_sha256(path))
        items = list(parse_hf(load_hf(path), os.path.basename(os.path.normpath(path)) or path))
    else:
        name = os.path.basename(path)
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            info = SourceInfo(path, fmt, None, "")
            info.skipped.append(Skipped(path, 0, f"unreadable file: {e.strerror}"))
            return info, []
        info = SourceInfo(path, fmt, None, hashlib.sha256(data).hexdigest())
        try:
            lines, info.encoding = decode_text(data)
        except UnicodeError as e:
            info.skipped.append(Skipped(path, 1, f"undecodable file: {e}"))
            return info, []
        if fmt == "json":
            items = list(parse_processed_json("\n".join(ln or "" for ln in lines), name))
        else:
            items = list(parse_raw_txt(lines, name))
    dialogues = []
    for it in items:
        if isinstance(it, Skipped):
            it.file = info.file
            info.skipped.append(it)
        else:
            it.source = info.file
            dialogues.append(it)
    info.records = len(dialogues)
    return info, dialogues

"""Which tokenizer each side of a study uses, told apart at load time — before any data is prepared or
Ray started — from the declared specs alone: ``data.tokenizer`` is the student's (the prepared data's),
``teacher.tokenizer`` the teacher's (null: the same). Pure Python: a saved tokenizer directory is read
as the JSON / text files it is (``tokenizer.json``'s vocabulary and added tokens, or ``vocab.txt``),
never through transformers, and a hub id is never fetched.

Two specs name one tokenizer when their identities agree: a tokenizer trained here (``train:N``,
``train-bpe:N``) is its kind and size (trained deterministically on the study's corpus); a directory
is its vocabulary size, special-token ids and a sha256 fingerprint of its vocabulary and of what else
decides the split (model type, merges, normaliser, pre-tokenizer, casing flags); a hub id is its name.
A trained spec, a directory and a hub id are different tokenizers to this check even where their
content agrees (a hub id is never fetched; a local copy of it is another spec): to use one tokenizer
on both sides, leave ``teacher.tokenizer`` null."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache

TRAINED = ("train:", "train-bpe:")
FILES = ("tokenizer.json", "vocab.txt")


@dataclass(frozen=True)
class TokenizerIdentity:
    """What tells one tokenizer from another: its spec, its vocabulary size (None when not readable
    here: a hub id), its special-token ids and a fingerprint of its vocabulary."""

    spec: str
    vocab_size: int | None
    special_ids: tuple[int, ...]
    fingerprint: str

    def describe(self) -> str:
        """``spec`` with its size, e.g. ``train-bpe:2000 (2,000 tokens)``."""
        return self.spec if self.vocab_size is None else f"{self.spec} ({self.vocab_size:,} tokens)"


class TokenizerSpecError(ValueError):
    """A tokenizer spec that names nothing readable (the caller adds the file and key)."""


def has_tokenizer(directory: str) -> bool:
    """Whether ``directory`` holds a saved tokenizer (``tokenizer.json`` or ``vocab.txt``)."""
    return os.path.isdir(directory) and any(os.path.isfile(os.path.join(directory, f)) for f in FILES)


@lru_cache(maxsize=64)
def identify(spec: str) -> TokenizerIdentity:
    """The ``TokenizerIdentity`` of a tokenizer spec (see the module docstring). TokenizerSpecError for a
    local path (``.``, ``/``, ``~``) that holds no saved tokenizer or an unreadable one."""
    if spec.startswith(TRAINED):
        kind, size = spec.split(":", 1)
        vocab = int(size) if size.isdigit() else None
        return TokenizerIdentity(spec, vocab, (), f"trained:{kind}:{vocab if vocab is not None else size}")
    path = os.path.expanduser(spec)
    if not has_tokenizer(path):
        if spec.startswith((".", "/", "~")) or os.path.isdir(path):
            raise TokenizerSpecError(f"{spec}: no saved tokenizer there (expected one of {', '.join(FILES)})")
        return TokenizerIdentity(spec, None, (), "hub:" + spec)
    try:
        vocab, special = _read_vocab(path)
        how = _how_it_splits(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TokenizerSpecError(f"{spec}: unreadable tokenizer files: {type(e).__name__}: {e}") from None
    digest = hashlib.sha256(json.dumps([sorted(vocab.items()), how], ensure_ascii=False, sort_keys=True)
                            .encode()).hexdigest()
    return TokenizerIdentity(spec, max(vocab.values()) + 1 if vocab else 0, tuple(sorted(special)),
                             f"sha256:{digest}:{','.join(map(str, sorted(special)))}")


def _read_vocab(path: str) -> tuple[dict[str, int], set[int]]:
    """(token → id, special ids) from a saved tokenizer: ``tokenizer.json`` (its model's vocabulary — a
    mapping for BPE / WordPiece, a list of [piece, score] for Unigram — plus its added tokens), else
    ``vocab.txt`` (one token per line, id = line number; the bracketed BERT specials are special)."""
    tj = os.path.join(path, "tokenizer.json")
    if os.path.isfile(tj):
        data = json.load(open(tj, encoding="utf-8"))
        raw = data["model"]["vocab"]
        vocab = dict(raw) if isinstance(raw, dict) else {piece: i for i, (piece, _) in enumerate(raw)}
        special = set()
        for t in data.get("added_tokens") or []:
            vocab[t["content"]] = int(t["id"])
            if t.get("special"):
                special.add(int(t["id"]))
        return vocab, special
    lines = open(os.path.join(path, "vocab.txt"), encoding="utf-8").read().splitlines()
    vocab = {tok: i for i, tok in enumerate(lines)}
    return vocab, {i for tok, i in vocab.items() if tok in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}


def _how_it_splits(path: str) -> list:
    """What decides how a text becomes those tokens besides the vocabulary: ``tokenizer.json``'s model
    type and merges, normaliser and pre-tokenizer, and ``tokenizer_config.json``'s casing flags (a cased
    and an uncased copy of one vocabulary are two tokenizers)."""
    out: list = []
    tj = os.path.join(path, "tokenizer.json")
    if os.path.isfile(tj):
        data = json.load(open(tj, encoding="utf-8"))
        model = data.get("model") or {}
        out += [model.get("type"), model.get("merges"), data.get("normalizer"), data.get("pre_tokenizer")]
    tc = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(tc):
        conf = json.load(open(tc, encoding="utf-8"))
        out.append({k: conf.get(k) for k in ("do_lower_case", "lowercase", "strip_accents", "tokenize_chinese_chars")})
    return out


def teacher_tokenizer_spec(cfg) -> str:
    """The teacher's tokenizer spec: ``teacher.tokenizer``, else the data's (``data.tokenizer``)."""
    return cfg.teacher.tokenizer or cfg.data.tokenizer


def tokenizer_mismatch(cfg) -> tuple[TokenizerIdentity, TokenizerIdentity] | None:
    """(teacher's, student's) identities when the study's two declared tokenizers differ, else None.
    TokenizerSpecError for a spec naming nothing readable."""
    if not cfg.teacher.tokenizer or cfg.teacher.tokenizer == cfg.data.tokenizer:
        return None
    t, s = identify(cfg.teacher.tokenizer), identify(cfg.data.tokenizer)
    return None if t.fingerprint == s.fingerprint else (t, s)

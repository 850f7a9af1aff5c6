"""Where two tokenizations of one text line up: the text-offset alignment of GOLD (TRL's ``GOLDTrainer``,
PR #5885) that ``gold`` distils over. Each side's tokens are given by where they end in the text's
UTF-8 bytes; a *span* closes where both sides reach the same byte boundary, so a span is the smallest
N:M block of student and teacher tokens covering the same bytes (1:1 where the two tokenizers cut
alike). Tokens after the last common boundary (one side truncated further than the other) belong to
no span (-1). Pure Python + the tokenizers' offsets, no torch.

Byte ends come from each tokenizer's character offsets. A character that one tokenizer splits into
several tokens (byte-level BPE cutting a 3-byte CJK character) gives those tokens the same offsets;
all but the last end *inside* the character and can close no span (a span then covers the whole
character on that side): a token ends inside a character when the next token's offsets start before its
own end (a byte-level token straddling two characters overlaps the next). Ends are kept doubled — ``2·byte`` at a character boundary, ``2·byte − 1``
inside the character ending at ``byte`` — so that both kinds order correctly and only even ones match."""

from __future__ import annotations

from typing import Sequence

NO_SPAN = -1


def byte_ends(text: str, offsets: Sequence[tuple[int, int]], special: Sequence[bool],
              after: tuple[int, int] | None = None) -> list[int]:
    """Doubled UTF-8 byte ends (see the module docstring) of the tokens with character ``offsets`` in
    ``text``; a special token (``special`` true: a bos, [CLS], … with no text) gets ``NO_SPAN``.
    ``after``: the offsets of the token that follows the last one in the untruncated tokenization (a
    truncation may cut inside a character), None when the text ends there."""
    prefix = [0]
    for ch in text:
        prefix.append(prefix[-1] + len(ch.encode("utf-8")))
    ends = []
    for i, ((start, end), sp) in enumerate(zip(offsets, special)):
        if sp:
            ends.append(NO_SPAN)
            continue
        nxt = next((offsets[j] for j in range(i + 1, len(offsets)) if not special[j]), after)
        inside = nxt is not None and nxt[0] < end  # the next token starts in this one's last character
        ends.append(2 * prefix[end] - (1 if inside else 0))
    return ends


def align_spans(ends_s: Sequence[int], ends_t: Sequence[int]) -> tuple[list[int], list[int]]:
    """The span of each token on both sides from their doubled byte ends (``byte_ends``; ``NO_SPAN``
    entries are skipped and stay ``NO_SPAN``): spans numbered 0, 1, … in text order, the same number on
    both sides; a token after the last common boundary gets ``NO_SPAN``. Returns (student spans,
    teacher spans), each as long as its input."""
    span_s, span_t = [NO_SPAN] * len(ends_s), [NO_SPAN] * len(ends_t)
    idx_s = [i for i, e in enumerate(ends_s) if e != NO_SPAN]
    idx_t = [j for j, e in enumerate(ends_t) if e != NO_SPAN]
    i = j = 0
    open_s: list[int] = []
    open_t: list[int] = []
    span = 0
    while i < len(idx_s) and j < len(idx_t):
        es, et = ends_s[idx_s[i]], ends_t[idx_t[j]]
        if es <= et:
            open_s.append(idx_s[i])
            i += 1
        if et <= es:
            open_t.append(idx_t[j])
            j += 1
        if es == et and es % 2 == 0:  # both sides end on the same character boundary: the span closes
            for k in open_s:
                span_s[k] = span
            for k in open_t:
                span_t[k] = span
            span += 1
            open_s, open_t = [], []
    return span_s, span_t


def token_spans(tok_s, tok_t, texts: Sequence[str], ids_s: Sequence[Sequence[int]], ids_t: Sequence[Sequence[int]],
                max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """The spans of every token of ``ids_s`` (the student's tokenizer ``tok_s``) and ``ids_t`` (the
    teacher's ``tok_t``), each the prepared ids of one of ``texts`` (specials added, truncated to
    ``max_length``, as ``raykd.data.tokenizer.encode_ids``). Each text is tokenized once more with
    offsets, and its ids must equal the prepared ones (ValueError naming the row otherwise)."""
    def encodings(tok, ids):
        backend = tok.backend_tokenizer
        backend.enable_truncation(max_length)
        backend.no_padding()
        encs = backend.encode_batch(list(texts), add_special_tokens=True)
        backend.no_truncation()
        whole = backend.encode_batch(list(texts), add_special_tokens=False)  # what follows a truncation
        backend.enable_truncation(max_length)
        out = []
        for row, (e, w, want) in enumerate(zip(encs, whole, ids)):
            if list(e.ids) != [int(i) for i in want]:
                raise ValueError(f"token_spans: row {row}: the text does not tokenize to its prepared ids with "
                                 f"{type(tok).__name__} (the tokenizer changed since the data was prepared?)")
            special = [bool(x) for x in e.special_tokens_mask]
            kept = len(special) - sum(special)
            rest = [o for o, sp in zip(w.offsets, w.special_tokens_mask) if not sp][kept:]
            out.append((e.offsets, special, tuple(rest[0]) if rest else None))
        return out

    out_s, out_t = [], []
    for text, es, et in zip(texts, encodings(tok_s, ids_s), encodings(tok_t, ids_t)):
        s, t = align_spans(byte_ends(text, *es), byte_ends(text, *et))
        out_s.append(s)
        out_t.append(t)
    return out_s, out_t


def shared_vocabulary(tok_s, tok_t, vocab_s: int, vocab_t: int) -> tuple[list[int], list[int]]:
    """The vocabulary entries both tokenizers hold under the same string (``get_vocab``; GOLD's
    ``vocab_mapping``), ids below each side's real vocabulary size: (student ids, teacher ids), pair i
    the same string, in the student's id order."""
    theirs = {s: i for s, i in tok_t.get_vocab().items() if i < vocab_t}
    pairs = sorted((i, theirs[s]) for s, i in tok_s.get_vocab().items() if i < vocab_s and s in theirs)
    return [p[0] for p in pairs], [p[1] for p in pairs]

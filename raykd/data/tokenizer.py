"""Tokenizers for prepared data: train a WordPiece tokenizer on the train split, or load an HF one."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from raykd.errors import RaykdError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


BPE_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # pad, bos, eos of the byte-level BPE tokenizer
BPE_MIN_VOCAB = 256 + len(BPE_SPECIAL_TOKENS) + 10  # the byte alphabet, the specials and some merges


def parse_spec(spec: str) -> tuple[str, int | str]:
    """Split a ``--tokenizer`` spec into ("train", vocab_size) — a WordPiece tokenizer (encoders) —,
    ("train-bpe", vocab_size) — a byte-level BPE tokenizer (causal LMs) — or ("hf", path_or_id)."""
    for prefix, kind, low in (("train:", "train", len(SPECIAL_TOKENS) + 10), ("train-bpe:", "train-bpe", BPE_MIN_VOCAB)):
        if spec.startswith(prefix):
            try:
                vocab = int(spec[len(prefix):])
            except ValueError:
                raise RaykdError(f"--tokenizer {spec}: expected {prefix}VOCAB with an integer VOCAB, e.g. "
                                 f"{prefix}8000") from None
            if vocab < low:
                raise RaykdError(f"--tokenizer {spec}: VOCAB must be at least {low}")
            return kind, vocab
    return "hf", spec


def train_bpe(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE tokenizer (GPT-2 / LLaMA-3 style: any text encodes, no unknown token)
    with ``<pad>``, ``<s>`` (bos) and ``</s>`` (eos) and no template of its own (the causal family
    composes prompt and response itself). Returns a ``transformers`` fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BPE_SPECIAL_TOKENS), min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    pad, bos, eos = BPE_SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, bos_token=bos, eos_token=eos,
                                   model_max_length=512)


def train_wordpiece(texts: Iterable[str], vocab_size: int):
    """Train a BERT-style WordPiece tokenizer (CJK characters split, English lower-cased, [CLS] x [SEP]).

    Returns a ``transformers`` fast tokenizer ready for ``save_pretrained``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        min_frequency=2, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def load_tokenizer(path_or_id: str):
    """Load an HF fast tokenizer from a directory or hub id (``trust_remote_code=False``)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=False)
    except Exception as e:  # transformers raises OSError/ValueError/HF hub errors for a bad spec
        raise RaykdError(f"tokenizer {path_or_id}: cannot load: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise RaykdError(f"tokenizer {path_or_id}: not a fast (tokenizers-backed) tokenizer")
    if tok.pad_token_id is None:
        raise RaykdError(f"tokenizer {path_or_id}: has no pad token")
    return tok


def tokenizer_sha256(directory: str | Path) -> str:
    """Content hash of a saved tokenizer directory (all files, names included)."""
    h = hashlib.sha256()
    for p in sorted(Path(directory).iterdir()):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def encode_ids(tok, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text with special tokens, truncated to ``max_length`` (no padding)."""
    backend = tok.backend_tokenizer
    backend.enable_truncation(max_length)
    backend.no_padding()
    return [e.ids for e in backend.encode_batch(texts, add_special_tokens=True)]

"""How a causal LM sees a QA pair: prompt = the patient's turn, response = the doctor's turn, as token
ids, composed from the prepared shards' per-side ids (no re-tokenization while training).

Through the tokenizer's chat template when it has one (user = question, assistant = answer), else
the documented plain template (``PLAIN``)::

    <bos>患者：{question}\\n医生：{answer}<eos>

The template is rendered once with marker strings standing in for the two turns and cut into three
fixed pieces (before the question, between the turns, after the answer), each tokenized on its own;
a pair is then ``prefix + question + middle`` (the prompt) and ``answer + suffix`` (the response).
Pieces are tokenized apart from the text they surround, so a merge across a boundary that joint
tokenization would make is not made (the boundaries are the template's own punctuation and
special tokens). Special tokens the shards' ids carry ([CLS]/[SEP], a bos the tokenizer adds) are
stripped from the turns first. Pure Python, no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

PLAIN = ("患者：", "\n医生：")  # the plain template's text before the question and before the answer
_Q, _A = "\u0000RAYKD_QUESTION\u0000", "\u0000RAYKD_ANSWER\u0000"


@dataclass(frozen=True)
class CausalTemplate:
    """The fixed token pieces of the template and the ids stripped from the turns."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    strip: tuple[int, ...]
    eos: int
    pad: int
    kind: str = "plain"  # plain | chat

    def prompt(self, question) -> list[int]:
        """The prompt's ids: prefix + the question's ids (specials stripped) + middle."""
        drop = set(self.strip)
        return [*self.prefix, *(int(i) for i in question if int(i) not in drop), *self.middle]

    def response(self, answer) -> list[int]:
        """The response's ids: the answer's ids (specials stripped) + suffix (ends with eos)."""
        drop = set(self.strip)
        return [*(int(i) for i in answer if int(i) not in drop), *self.suffix]

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CausalTemplate":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def causal_template(tokenizer, use_chat_template: bool = True) -> CausalTemplate:
    """The ``CausalTemplate`` of an HF tokenizer: its chat template when it has one (and
    ``use_chat_template``), else ``PLAIN``. Raises ValueError when the tokenizer has no eos token
    (a response must end) or no pad token."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        raise ValueError(f"{type(tokenizer).__name__}: a causal LM's tokenizer needs an eos token")
    if pad is None:
        raise ValueError(f"{type(tokenizer).__name__}: needs a pad token")
    strip = tuple(sorted(int(i) for i in tokenizer.all_special_ids))
    enc = lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []  # noqa: E731
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": _Q}, {"role": "assistant", "content": _A}],
                                             tokenize=False)
        before, rest = text.split(_Q, 1)
        middle, after = rest.split(_A, 1)
        suffix = enc(after)
        if eos not in suffix:
            suffix.append(eos)
        return CausalTemplate(tuple(enc(before)), tuple(enc(middle)), tuple(suffix), strip, eos, pad, "chat")
    bos = tokenizer.bos_token_id
    prefix = ([bos] if bos is not None else []) + enc(PLAIN[0])
    return CausalTemplate(tuple(prefix), tuple(enc(PLAIN[1])), (eos,), strip, eos, pad, "plain")

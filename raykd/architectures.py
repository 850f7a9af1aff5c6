"""Which model family an HF config's ``architectures`` name, by the class-name rule shared by config
validation (``config.resolve_family``) and the model families (``families.family_of_spec``). Pure
Python: no torch, no transformers."""

from __future__ import annotations

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel, …
MASKED_SUFFIXES = ("ForMaskedLM", "ForPreTraining")  # BertForMaskedLM, BertForPreTraining, …
MASKED_TRUNKS = ("BertModel", "RobertaModel")
# what each family offers the methods (raykd.distill.settings declares what each method needs; no family
# lists methods): a token-prediction head, BERT-style masked inputs, bidirectional attention q/k/v of equal
# widths (a decoder's are causal, and narrower under grouped-query attention), generation
FAMILY_CAPABILITIES = {"masked_lm": frozenset({"token_head", "masked_inputs", "attention_qkv"}),
                       "causal_lm": frozenset({"token_head", "generates"})}


def family_of_architectures(archs: list[str]) -> str | None:
    """``causal_lm`` when any of ``archs`` is a causal-LM head, else ``masked_lm`` when any is a
    masked-LM head or a BERT-style trunk, else None (neither)."""
    if any(a.endswith(CAUSAL_SUFFIXES) for a in archs):
        return "causal_lm"
    if any(a.endswith(MASKED_SUFFIXES) or a in MASKED_TRUNKS for a in archs):
        return "masked_lm"
    return None
# the metrics (without split) each family's trials report: masked_lm's similarity to the teacher and QA
# retrieval, causal_lm's claim form (answer selection, its chance and the retained shares, perplexity, speed)
FAMILY_METRIC_KEYS = {
    "masked_lm": ("semantic_alignment", "representation_compactness", "structural_consistency", "mrr@10", "recall@1",
                  "retained_mrr"),
    "causal_lm": ("perplexity", "answer_accuracy", "answer_chance", "retained_accuracy",
                  "retained_accuracy_above_chance", "param_reduction", "speedup_b1", "speedup_b32",
                  "decode_tokens_per_s", "rouge_l"),
}

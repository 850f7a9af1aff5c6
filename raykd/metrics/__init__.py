"""Metrics, pure torch / numpy (no Ray): ``representation`` (the encoder family's alignment, compactness,
consistency, CKA and QA retrieval) and ``causal`` (answer selection, perplexity, ROUGE-L, decoding speed).

The encoder metrics' public names stay importable from here (``raykd.metrics.semantic_alignment`` …)."""

from raykd.metrics.representation import (content_mask, content_repr, debiased_cka_resampled, debiased_linear_cka,
                                          efficiency, evaluate, last_hidden, linear_cka, qa_retrieval, reciprocal_ranks,
                                          representation_compactness, semantic_alignment, split_fit_scored,
                                          structural_consistency, teacher_outputs)

__all__ = ["semantic_alignment", "representation_compactness", "structural_consistency", "linear_cka",
           "debiased_linear_cka", "qa_retrieval", "reciprocal_ranks", "efficiency", "evaluate", "teacher_outputs",
           "content_repr", "content_mask", "last_hidden", "split_fit_scored", "debiased_cka_resampled"]

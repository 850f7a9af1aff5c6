"""Metrics, pure torch / numpy (no Ray): ``representation`` (the encoder family's alignment, compactness,
consistency, CKA and QA retrieval) and ``causal`` (answer selection, perplexity, ROUGE-L, decoding speed).

The encoder metrics' public names stay importable from here (``raykd.metrics.semantic_alignment`` …)."""

from raykd.metrics.representation import (debiased_linear_cka, efficiency, linear_cka, qa_retrieval,
                                          representation_compactness, semantic_alignment, structural_consistency)

__all__ = ["semantic_alignment", "representation_compactness", "structural_consistency", "linear_cka",
           "debiased_linear_cka", "qa_retrieval", "efficiency"]

"""Evaluation of a trial's student: one module per model family (``masked_lm``, ``causal_lm``)."""

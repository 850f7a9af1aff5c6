"""Evaluation of a trial's student: one protocol (``protocol``: evaluation pairs, bootstrap, the teacher's memo,
the interface) and a part per model family (``masked_lm``, ``causal_lm``), named by the family's declaration."""

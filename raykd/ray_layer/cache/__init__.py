"""R: teacher-output caches on Ray Data: one ``builder`` with a part per family (``masked_lm``: hidden states,
``causal_lm``: top-k logits and hidden states) and the ``cli`` (``python -m raykd cache``)."""

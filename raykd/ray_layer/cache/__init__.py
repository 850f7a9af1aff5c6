"""R: teacher caches on Ray Data: ``masked_lm`` (hidden states / logits), ``causal_lm`` (top-k logits), ``cli``."""

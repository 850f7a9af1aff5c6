"""Training: the trial plan (``trial_spec``), precision, FSDP (``parallel``) and the compute budget."""

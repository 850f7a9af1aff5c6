"""Training stages before the trials: teacher adaptation (``adapt``) and sampler scoring (``score``)."""

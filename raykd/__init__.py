"""raykd: Ray-distributed hyperparameter and ablation studies of domain-oriented knowledge distillation."""

__version__ = "0.1.0"

"""R: live trial metrics for the Ray dashboard / Prometheus export (``ray.util.metrics``).

Rank 0 of every trial sets four gauges tagged with the trial id; Ray exports them from each node's
metrics agent as ``ray_raykd_<name>{trial_id="…"}`` (the dashboard's Metrics view and Prometheus
read that export).
"""

from __future__ import annotations

GAUGES = {
    "raykd_step": "optimizer steps done by the trial",
    "raykd_train_loss": "the trial's training loss at its latest optimizer step",
    "raykd_tokens_per_s": "training tokens per second over the latest evaluation interval (all workers)",
    "raykd_best_metric": "the best value of the experiment's validation metric so far",
}


class LiveMetrics:
    """The trial's gauges; cheap to set every step (values are aggregated and exported by Ray)."""

    def __init__(self, trial_id: str):
        from ray.util.metrics import Gauge

        self.tags = {"trial_id": trial_id or "unknown"}
        self.gauges = {name: Gauge(name, description=desc, tag_keys=("trial_id",)) for name, desc in GAUGES.items()}

    def set_step(self, step: int, loss: float) -> None:
        """Record the optimizer step count and that step's training loss."""
        self.gauges["raykd_step"].set(step, tags=self.tags)
        self.gauges["raykd_train_loss"].set(loss, tags=self.tags)

    def set_report(self, result: dict) -> None:
        """Record throughput and the best validation metric from a reported result."""
        if result.get("tokens_per_s") is not None:
            self.gauges["raykd_tokens_per_s"].set(float(result["tokens_per_s"]), tags=self.tags)
        best = result.get("best_metric")
        if best is not None and best == best:
            self.gauges["raykd_best_metric"].set(float(best), tags=self.tags)


def auth_token() -> str | None:
    """The Ray cluster's auth token as Ray finds it (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
    else ``~/.ray/auth_token``); None when there is none."""
    import os

    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None

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


class PeriodicSampler:
    """Calls ``sample()`` every ``period_s`` seconds in a background thread while used as a context
    manager, and once more on exit. Subclasses implement ``sample``."""

    def __init__(self, period_s: float = 2.0):
        import threading

        self.period_s = period_s
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.sample()
                self.samples += 1
            except Exception:  # a process vanishing mid-sample, Ray shutting down
                continue

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)
        try:
            self.sample()
        except Exception:
            pass


class ResourceWatch(PeriodicSampler):
    """Peaks, sampled every ``period_s``, of the summed resident memory (bytes) of this process and
    all its descendants (the local Ray node started here: GCS, raylet, agents, workers) and of the
    object store's used bytes."""

    def __init__(self, period_s: float = 2.0):
        super().__init__(period_s)
        self.peak_rss = 0
        self.peak_object_store = 0

    def sample(self) -> None:
        """Take one sample now."""
        import psutil
        import ray

        me = psutil.Process()
        rss = 0
        for p in [me] + me.children(recursive=True):
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)
        if ray.is_initialized():
            self.peak_object_store = max(self.peak_object_store, object_store_used())


def object_store_used() -> int:
    """Bytes in the cluster's object stores now (from Ray's memory summary; 0 when unavailable)."""
    import re

    from ray._private.internal_api import memory_summary

    try:
        text = memory_summary(stats_only=True)
    except Exception:
        return 0
    m = re.search(r"Plasma memory usage (\d+) MiB", text)
    return int(m.group(1)) * 2**20 if m else 0

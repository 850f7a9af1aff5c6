"""R: live trial metrics for the Ray dashboard / Prometheus export (``ray.util.metrics``).

Rank 0 of every trial sets the gauges of ``GAUGES``, tagged with the trial id, its method and its role; Ray
exports them from each node's metrics agent as ``ray_raykd_<name>{trial_id="…", method="…", role="…"}`` (the
dashboard's Metrics view, Prometheus and raykd's Grafana dashboard read that export).
"""

from __future__ import annotations

import math

GAUGES = {
    "raykd_step": "optimizer steps done by the trial",
    "raykd_train_loss": "the trial's training loss at its latest optimizer step",
    "raykd_tokens_per_s": "training tokens per second over the latest evaluation interval (all workers)",
    "raykd_best_metric": "the best value of the experiment's validation metric so far",
    "raykd_loss_term": "each term of the trial's loss (tag term) at its latest optimizer step",
    "raykd_val_metric": "the experiment's validation metric at the trial's latest evaluation",
    "raykd_samples_per_s": "training pairs per second over the latest evaluation interval (all workers)",
    "raykd_flops_per_s": "training FLOP/s over the latest evaluation interval: the teacher's forward and the "
                         "student's forward and backward, from --dry-run's model (train.budget.step_flops)",
    "raykd_mfu": "raykd_flops_per_s / the trial's GPUs' dense bf16 peak (only where the GPU's peak is known)",
    "raykd_gpu_memory_bytes": "GPU memory allocated by torch on the trial's rank-0 worker (on GPU only)",
    "raykd_reference": "a reference point of the experiment's validation metric (tag reference: teacher, init), "
                       "set by the no-distillation reference trial: flat lines beside the trials",
    "raykd_trial_running": "1 while the trial runs, 0 once it has ended (its other series are then NaN: no "
                           "stale flat line after a trial)",
}
TAG_KEYS = ("trial_id", "method", "role")  # role: search, confirm or reference (the no-distillation trial)
EXTRA_TAG = {"raykd_loss_term": "term", "raykd_reference": "reference"}
# dense bf16 tensor-core peaks (FLOP/s) of the GPUs raykd is run on; MFU is left out on any other device
PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L4": 121e12, "A10G": 125e12, "L40S": 362e12}


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU named ``device_name`` (torch.cuda.get_device_name), or None."""
    return next((v for k, v in PEAK_FLOPS.items() if k in device_name.upper()), None)


class LiveMetrics:
    """The trial's gauges; cheap to set every step (values are aggregated and exported by Ray). Every series is
    tagged with the trial id, its method and its role."""

    def __init__(self, trial_id: str, method: str = "", role: str = "search"):
        from ray.util.metrics import Gauge

        self.tags = {"trial_id": trial_id or "unknown", "method": method or "unknown", "role": role}
        self.gauges = {name: Gauge(name, description=desc, tag_keys=TAG_KEYS + ((EXTRA_TAG[name],) if name in
                                                                                 EXTRA_TAG else ()))
                       for name, desc in GAUGES.items()}
        self.terms: set[str] = set()
        self.references: set[str] = set()
        self.gauges["raykd_trial_running"].set(1, tags=self.tags)

    def set_step(self, step: int, loss: float, terms: dict | None = None) -> None:
        """Record the optimizer step count, that step's training loss and each of its loss terms."""
        self.gauges["raykd_step"].set(step, tags=self.tags)
        self.gauges["raykd_train_loss"].set(loss, tags=self.tags)
        for name, value in (terms or {}).items():
            self.terms.add(name)
            self.gauges["raykd_loss_term"].set(float(value), tags={**self.tags, "term": name})

    def set_report(self, result: dict, metric: str | None = None, gpu_peak: float | None = None) -> None:
        """Record throughput (tokens, pairs and FLOP/s, MFU against ``gpu_peak``), GPU memory, the validation
        ``metric`` and the best of it so far from a reported result."""
        for key, gauge in (("tokens_per_s", "raykd_tokens_per_s"), ("samples_per_s", "raykd_samples_per_s"),
                           ("flops_per_s", "raykd_flops_per_s"), ("gpu_memory_bytes", "raykd_gpu_memory_bytes"),
                           (metric, "raykd_val_metric"), ("best_metric", "raykd_best_metric")):
            value = result.get(key) if key else None
            if value is not None and math.isfinite(float(value)):
                self.gauges[gauge].set(float(value), tags=self.tags)
        if gpu_peak and result.get("flops_per_s") is not None:
            self.gauges["raykd_mfu"].set(float(result["flops_per_s"]) / gpu_peak, tags=self.tags)

    def set_references(self, values: dict) -> None:
        """Record reference points of the validation metric ({reference name: value}: teacher, init)."""
        for name, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self.references.add(name)
                self.gauges["raykd_reference"].set(float(value), tags={**self.tags, "reference": name})

    def end(self) -> None:
        """The trial has ended: ``raykd_trial_running`` 0 and every other series of it NaN (Prometheus and
        Grafana draw no line through NaN), so its last values do not linger as flat lines."""
        nan = float("nan")
        for name, gauge in self.gauges.items():
            if name == "raykd_trial_running":
                gauge.set(0, tags=self.tags)
            elif name == "raykd_loss_term":
                for term in self.terms:
                    gauge.set(nan, tags={**self.tags, "term": term})
            elif name == "raykd_reference":
                for ref in self.references:
                    gauge.set(nan, tags={**self.tags, "reference": ref})
            else:
                gauge.set(nan, tags=self.tags)


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

"""R: live trial metrics for the Ray dashboard / Prometheus export (``ray.util.metrics``).

Rank 0 of every trial sets the gauges of ``GAUGES``, tagged with the trial id, its method and its role; Ray
exports them from each node's metrics agent as ``ray_raykd_<name>{trial_id="…", method="…", role="…"}`` (the
dashboard's Metrics view, Prometheus and raykd's Grafana dashboard read that export).
"""

from __future__ import annotations

import math
import time

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
    "raykd_reference": "a reference point of the experiment's validation metric (tag reference: teacher, init, "
                       "no_distill): each reference trial's teacher and init while it runs, then the study's mean "
                       "of each over the seeds (trial_id: the study's name) until the study ends: flat lines "
                       "beside the trials",
    "raykd_trial_running": "1 while the trial runs, 0 once it has ended (its other series then end: no stale "
                           "flat line after a trial)",
}
TAG_KEYS = ("trial_id", "method", "role")  # role: search, confirm or reference (the no-distillation trial)
EXTRA_TAG = {"raykd_loss_term": "term", "raykd_reference": "reference"}
# dense bf16 tensor-core peaks (FLOP/s) of the GPUs raykd is run on; MFU is left out on any other device
PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L4": 121e12, "A10G": 125e12, "L40S": 362e12}


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU named ``device_name`` (torch.cuda.get_device_name), or None."""
    return next((v for k, v in PEAK_FLOPS.items() if k in device_name.upper()), None)


def refresh_period_s() -> float:
    """Seconds between re-sends of a held gauge value: half of this process's metrics report interval
    (``RAY_metrics_report_interval_ms``, Ray's default 10 s, floored at 1 s as Ray does)."""
    import os

    try:
        import ray

        interval_ms = ray._config.metrics_report_interval_ms()  # RAY: the interval this worker reports at
    except Exception:
        interval_ms = int(os.environ.get("RAY_metrics_report_interval_ms", "10000"))
    return max(interval_ms, 1000) / 2000


class HeldGauges:
    """Gauges of ``GAUGES`` tagged ``tags`` whose latest values are sent again every ``period_s`` seconds
    (``refresh_period_s``) until ``end``: Ray's metrics agent drops a gauge series that is not set again within
    two report intervals (Ray 2.60's gauge TTL), so a value set once — a reference point, the validation metric
    between evaluations minutes apart — would vanish from every chart seconds later. With ``lease_s``, re-sending
    pauses once nothing has been set for max(``lease_s``, twice the longest gap between sets so far) — a trial
    that Tune stopped but whose actor it keeps for reuse stops showing as running — and resumes at the next set."""

    def __init__(self, tags: dict, period_s: float | None = None, lease_s: float | None = None):
        import threading

        from ray.util.metrics import Gauge

        self.tags = tags
        self.gauges = {name: Gauge(name, description=desc, tag_keys=TAG_KEYS + ((EXTRA_TAG[name],) if name in
                                                                                 EXTRA_TAG else ()))
                       for name, desc in GAUGES.items()}
        self.values: dict[tuple, float] = {}  # (gauge name, extra tags as sorted pairs) → latest value
        self.lease_s = lease_s
        self._last_set = time.monotonic()
        self._longest_gap = 0.0
        self._lock = threading.Lock()
        self._refresher = _Refresher(self.refresh, period_s or refresh_period_s())
        self._refresher.start()

    def set(self, name: str, value: float, **extra: str) -> None:
        """Set gauge ``name`` (tagged with ``extra`` besides the held tags) to ``value`` and hold it."""
        with self._lock:
            now = time.monotonic()
            self._longest_gap = max(self._longest_gap, now - self._last_set)
            self._last_set = now
            self.values[(name, tuple(sorted(extra.items())))] = float(value)
            self.gauges[name].set(float(value), tags={**self.tags, **extra})

    def refresh(self) -> None:
        """Send every held value again (the refresher's thread calls it every period), unless the lease ran out."""
        with self._lock:
            if self.lease_s is not None and \
                    time.monotonic() - self._last_set > max(self.lease_s, 2 * self._longest_gap):
                return
            for (name, extra), value in self.values.items():
                self.gauges[name].set(value, tags={**self.tags, **dict(extra)})

    def set_references(self, values: dict) -> None:
        """Hold reference points of the validation metric ({reference name: value}: teacher, init,
        no_distill; None or non-finite values are left out)."""
        for name, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self.set("raykd_reference", float(value), reference=name)

    def end(self) -> None:
        """Stop re-sending: every held series leaves Ray's export within two report intervals. Each is also set
        to NaN (which Ray's export leaves out, and a chart fed NaN draws no line through). Idempotent."""
        self._refresher.stop()
        with self._lock:
            for (name, extra), _ in self.values.items():
                self.gauges[name].set(float("nan"), tags={**self.tags, **dict(extra)})
            self.values.clear()


class LiveMetrics(HeldGauges):
    """A trial's gauges, tagged with the trial id, its method and its role; cheap to set every step (values are
    aggregated and exported by Ray). ``raykd_trial_running`` is 1 until ``end`` sets it to 0."""

    LEASE_S = 120.0  # at least this long without a set before a trial's values stop being re-sent

    def __init__(self, trial_id: str, method: str = "", role: str = "search", period_s: float | None = None):
        super().__init__({"trial_id": trial_id or "unknown", "method": method or "unknown", "role": role}, period_s,
                         lease_s=self.LEASE_S)
        self.set("raykd_trial_running", 1)

    def set_step(self, step: int, loss: float, terms: dict | None = None) -> None:
        """Record the optimizer step count, that step's training loss and each of its loss terms."""
        self.set("raykd_step", step)
        self.set("raykd_train_loss", loss)
        for name, value in (terms or {}).items():
            self.set("raykd_loss_term", float(value), term=name)

    def set_report(self, result: dict, metric: str | None = None, gpu_peak: float | None = None) -> None:
        """Record throughput (tokens, pairs and FLOP/s, MFU against ``gpu_peak``), GPU memory, the validation
        ``metric`` and the best of it so far from a reported result."""
        for key, gauge in (("tokens_per_s", "raykd_tokens_per_s"), ("samples_per_s", "raykd_samples_per_s"),
                           ("flops_per_s", "raykd_flops_per_s"), ("gpu_memory_bytes", "raykd_gpu_memory_bytes"),
                           (metric, "raykd_val_metric"), ("best_metric", "raykd_best_metric")):
            value = result.get(key) if key else None
            if value is not None and math.isfinite(float(value)):
                self.set(gauge, float(value))
        if gpu_peak and result.get("flops_per_s") is not None:
            self.set("raykd_mfu", float(result["flops_per_s"]) / gpu_peak)

    def end(self) -> None:
        """The trial has ended: ``raykd_trial_running`` 0 and every other series of it NaN."""
        super().end()
        self.gauges["raykd_trial_running"].set(0, tags=self.tags)


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


class _Refresher(PeriodicSampler):
    """Calls ``fn`` every ``period_s`` seconds in a daemon thread from ``start`` to ``stop`` (``HeldGauges``'
    re-sends; unlike a sampler's exit, ``stop`` calls it no more)."""

    def __init__(self, fn, period_s: float):
        super().__init__(period_s)
        self.fn = fn

    def sample(self) -> None:
        self.fn()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)


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

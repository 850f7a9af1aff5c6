"""R: starting or joining the Ray a study runs on: a single-machine Ray on 127.0.0.1 that raykd
starts itself (settings, dashboard, Ray Data's service actors started early), or ``--address``."""

from __future__ import annotations

import os
import sys

from raykd.ray_layer.inputs import log


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_only() -> None:
    """Make the Ray started by this process a single-machine Ray on 127.0.0.1: Ray 2.60 rewrites a
    node IP of 127.0.0.1 to the machine's routable address and its GCS, raylet and agents listen on
    all interfaces; with multi-node clustering off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, what
    Ray does on macOS/Windows) the node IP stays 127.0.0.1 and every port binds to it. Child
    processes inherit it. Never used with ``--address`` (a real cluster needs routable IPs).
    Ray reads the variable when ``ray._private.ray_constants`` is imported; when that happened
    already in this process, the constant is set to match."""
    os.environ.setdefault(LOOPBACK_ENV, "0")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ[LOOPBACK_ENV] in ("0", "false", "False"):
        constants.ENABLE_RAY_CLUSTER = False


PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
SOFT_LIMIT_ENV = "RAY_num_workers_soft_limit"


TRAIN_STATE_ENV = "RAY_TRAIN_ENABLE_STATE_TRACKING"


def single_machine_ray(keep_idle_workers: bool = True) -> None:
    """Settings for a Ray this process starts on one machine (never with ``--address``), set in the
    environment before ``ray.init`` so its raylet and every worker inherit them; values the user
    exported are kept:
    - ``loopback_only`` (every port on 127.0.0.1);
    - Ray Train's preemption watcher off (``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0``): it is one more
      actor process per trial (~1.6 s of CPU to start), watching for cloud preemption notices that
      a single machine never gets;
    - with ``keep_idle_workers`` (trials with a Train worker group), idle task workers kept for
      reuse (``RAY_num_workers_soft_limit`` = 4 × CPUs + 16): by default Ray kills idle workers
      beyond one per CPU after a second, and a worker-group trial's ~10 helper actors count against
      that, so each trial's Ray Data read ran in a new process (~1.5 s of CPU). Idle workers are
      bounded by the tasks that ran at once (0.25 CPU each: ≤ 4 × CPUs). Each kept one wakes 100
      times a second (Ray's 10 ms signal check) and costs a CPU-bound trial ~0.7–1 % of its speed on
      2 busy cores (``scripts/bench.py idle``): short trials gain, trials longer than ~2 minutes
      lose; ``RAY_num_workers_soft_limit=0`` exported turns it off. Local-mode trials (one reused
      actor, no helper actors) gain nothing from it — their first step comes as soon with Ray's
      default, which keeps one idle worker where this keeps three — so they get Ray's default;
    - Ray Train's state tracking on (``RAY_TRAIN_ENABLE_STATE_TRACKING=1``), so the dashboard's Train
      view lists the Train runs of worker-group trials (README, *Live charts*)."""
    loopback_only()
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    os.environ.setdefault(TRAIN_STATE_ENV, "1")
    if keep_idle_workers:
        os.environ.setdefault(SOFT_LIMIT_ENV, str(4 * (os.cpu_count() or 1) + 16))


def prestart_ray_data_services() -> dict:
    """Ask the Ray this process just started for Ray Data's two per-cluster service actors (the
    dataset stats actor and the autoscaling coordinator: detached, 0 CPUs, created by the first
    dataset that runs anyway) without waiting for them. Each is a fresh Python process (~1.5 s of
    CPU); created now, they start while Tune schedules the first trial and its process imports
    torch and transformers — one core busy — instead of stealing CPU from the first trial's
    training steps. Returns their handles by class name (``ray.get(h.__ray_ready__.remote())``
    waits for one); empty where this Ray version no longer has them (then the first dataset starts
    them, as before)."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
        from ray.data._internal.stats import get_or_create_stats_actor
    except ImportError:
        return {}
    return {"_StatsActor": get_or_create_stats_actor(),
            "_AutoscalingCoordinatorActor": get_or_create_autoscaling_coordinator()}


def start_local_ray(num_cpus: int | None = None, pythonpath: str | None = None, keep_idle_workers: bool = True,
                    runtime_env: dict | None = None):
    """Start the single-machine Ray raykd uses wherever it starts one itself (``raykd.tune`` without
    ``--address``, the test session, the benchmarks): ``single_machine_ray(keep_idle_workers)``
    settings, dashboard on 127.0.0.1, worker output kept in Ray's logs, ``pythonpath`` (if given) on
    every worker's PYTHONPATH, ``runtime_env`` (if given) for every job, then ``prestart_ray_data_services``. Returns (``ray.init``'s context,
    the service actors' handles by class name, not waited for)."""
    import ray

    single_machine_ray(keep_idle_workers)
    ctx = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                   _node_ip_address="127.0.0.1", log_to_driver=False,
                   runtime_env={**(runtime_env or {}), **({"env_vars": {"PYTHONPATH": pythonpath}} if pythonpath else {})}
                   or None)
    return ctx, prestart_ray_data_services()


def init_ray(address: str | None, keep_idle_workers: bool = True, plugins: list | tuple = ()):
    """Connect to Ray; returns (ray module, whether this call started it). An already initialised
    Ray in this process (library use, tests) is used as it is; a Ray started here keeps idle
    workers for reuse only with ``keep_idle_workers`` (see ``single_machine_ray``). The (imported)
    ``plugins`` modules are shipped to every worker of a Ray connected or started here (runtime
    env ``py_modules``); on a Ray initialised before, workers import them from the driver's paths."""
    import ray

    if ray.is_initialized():
        return ray, False
    runtime_env = {"py_modules": plugin_modules(plugins)} if plugins else None
    if address:
        ctx = ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        ctx, _ = start_local_ray(keep_idle_workers=keep_idle_workers, runtime_env=runtime_env)
    url = f"http://{ctx.dashboard_url or '127.0.0.1:8265'}"
    log(f"[tune] Ray {ray.__version__} · dashboard {url} (bound to 127.0.0.1; token auth on: the page asks for the "
        f"token in ~/.ray/auth_token; API: curl -H \"Authorization: Bearer $(cat ~/.ray/auth_token)\" {url}/api/jobs/)"
        " · live trial gauges ray_raykd_* (raykd.ray_layer.monitoring.GAUGES) in its Metrics view, or --monitor")
    return ray, True


def session_dir() -> str:
    """The session directory of the Ray node this process is connected to (its metrics export's service
    discovery file is there); Ray's default ``/tmp/ray/session_latest`` when it cannot be read."""
    try:
        import ray

        return ray._private.worker.global_worker.node.get_session_dir_path()  # no public API names it
    except Exception:
        return "/tmp/ray/session_latest"


def plugin_modules(plugins) -> list:
    """The top-level modules / packages of the (imported) plugin modules, as ``py_modules`` takes them."""
    return list({name.split(".")[0]: sys.modules[name.split(".")[0]] for name in plugins}.values())

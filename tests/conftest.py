"""Shared fixtures. Ray is started at most once per test session (``ray_session``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from raykd.ray_layer.monitoring import PeriodicSampler, auth_token

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A local Ray (2 CPUs, dashboard on 127.0.0.1) shared by every integration test of the session."""
    import ray

    if not ray.is_initialized():
        from raykd.ray_layer.cluster import start_local_ray
        from raykd.ray_layer.live_view import REPORT_INTERVAL_ENV, REPORT_INTERVAL_MS

        # as `raykd.tune --monitor` does: workers export their gauges every 2 s, not Ray's default 10 s, so the
        # session's short trials (a few seconds each) are seen by the Prometheus export while they run
        os.environ.setdefault(REPORT_INTERVAL_ENV, REPORT_INTERVAL_MS)
        start_local_ray(2, str(ROOT))
    yield ray
    ray.shutdown()


def wait_for_idle_cluster(ray, timeout_s: float = 120.0) -> None:
    """Return once no CPU of the session's Ray is held (by an earlier test's trials, a killed driver's actors or
    placement groups); fail after ``timeout_s`` naming what holds them — instead of the next study waiting out
    its whole timeout with its trials pending."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= ray.cluster_resources().get("CPU", 0.0):
            return
        time.sleep(1.0)
    from ray.util.state import list_actors, list_placement_groups

    actors = [f"{a.class_name} (job {a.job_id})" for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)]
    groups = [f"{g.placement_group_id} {g.state}" for g in list_placement_groups(limit=1000) if g.state != "REMOVED"]
    pytest.fail(f"the cluster is still busy after {timeout_s:.0f} s: {ray.available_resources().get('CPU', 0.0)} of "
                f"{ray.cluster_resources().get('CPU', 0.0)} CPUs free; alive actors {actors}; placement groups {groups}")


@pytest.fixture
def meta_nonzero():
    """Boolean indexing on the meta device (task positions) with the all-nonzero assumption."""
    import torch.fx.experimental._config as fx_config

    old = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True
    yield
    fx_config.meta_nonzero_assume_all_nonzero = old


@pytest.fixture(scope="session")
def causal_work(tmp_path_factory):
    """One work directory for the causal integration tests: the generated corpus, its BPE tokenizer
    and the adapted causal teacher are content-addressed there, so they are built once per session."""
    return tmp_path_factory.mktemp("causal")


CAUSAL_OVERRIDES = {"data.synth.dialogs": 600, "teacher.adapt.steps": 40}  # the causal tests' shared inputs


@pytest.fixture(scope="session")
def synth_prepared(tmp_path_factory):
    """A generated corpus (300 dialogues) prepared once per session: (raw dir, prepared dir, manifest)."""
    from raykd.data.shards import PrepareSettings, prepare
    from raykd.data.synth import write_corpus

    base = tmp_path_factory.mktemp("synth")
    write_corpus(base / "raw", 300, seed=7)
    manifest = prepare(PrepareSettings(raw=[str(base / "raw")], out=str(base / "prepared"), max_length=128,
                                       shard_rows=400, quiet=True))
    return base / "raw", base / "prepared", manifest


def run_module(*args: str, cwd: Path | None = None, env: dict | None = None):
    """Run ``python -m ARGS`` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=full_env, timeout=600)


SMOKE = str(ROOT / "search_spaces" / "smoke.yaml")
# what the tests' tiny studies keep of the embedded default's shape: worker-group trials, a student of
# the teacher's width (initialised from its layers), no confirm phase (each test sets what it checks)
TEST_BASE = ["train.local_mode=false", "student.hidden=null", "search.confirm.top_k=0", "search.confirm.seeds=[]"]
GRID_ARGS = ["search.algorithm=grid", "train.steps=16", "train.eval_every=8", "space={depth: {grid: [1, 3]}}",
             "experiment.seeds=[0, 1]", "teacher.cache=true"]  # the grid's trials read the teacher cache


def study_args(tmp: Path, name: str, *sets: str) -> list[str]:
    """CLI arguments of a tiny smoke-based study under ``tmp`` (shared data / teacher cache)."""
    return ["--config", SMOKE, "--storage", str(tmp / "exp"), "--name", name, "--set",
            f"data.work_dir={tmp / 'work'}", "data.synth.dialogs=600", "teacher.adapt.steps=30",
            "train.eval_pairs=64", *TEST_BASE, *sets]


class ClusterMonitor(PeriodicSampler):
    """Polls the dashboard's HTTP API (with and without the token) and the node's Prometheus
    export every 2 s while a study runs; keeps what it saw."""

    def __init__(self, ray):
        super().__init__(2.0)
        self.dashboard = "http://" + ray._private.worker.get_dashboard_url()
        self.metrics_url = f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"
        self.token = auth_token()
        self.codes_without_token: set[int] = set()
        self.codes_with_token: set[int] = set()
        self.actor_classes: set[str] = set()
        self.jobs = 0
        self.train_runs: set[str] = set()  # the dashboard's Train view (Train state tracking): run names
        self.gauge_lines: set[str] = set()

    def _get(self, url: str, token: bool):
        import urllib.error
        import urllib.request

        headers = {"Authorization": f"Bearer {self.token}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return None, ""

    def sample(self) -> None:
        import json

        code, _ = self._get(self.dashboard + "/api/v0/actors", False)
        if code:
            self.codes_without_token.add(code)
        code, body = self._get(self.dashboard + "/api/v0/actors?limit=1000", True)
        if code:
            self.codes_with_token.add(code)
        if code == 200:
            for a in json.loads(body)["data"]["result"]["result"]:
                self.actor_classes.add(a.get("class_name", ""))
        code, body = self._get(self.dashboard + "/api/jobs/", True)
        if code == 200:
            self.jobs = max(self.jobs, len(json.loads(body)))
        code, body = self._get(self.dashboard + "/api/train/v2/runs/v1", True)
        if code == 200:
            self.train_runs |= {r.get("name", "") for r in json.loads(body).get("train_runs", [])}
        code, body = self._get(self.metrics_url, False)
        if code == 200:
            self.gauge_lines |= {x for x in body.splitlines() if x.startswith("ray_raykd_")}



@pytest.fixture(scope="session")
def grid_experiment(ray_session, tmp_path_factory):
    """A tiny real grid experiment shared by the engine, TensorBoard, report and export tests:
    depth ∈ {1, 3} × seeds {0, 1} = 4 trials of 16 steps (evaluations at 8 and 16), run through the
    CLI's ``main`` on the session's Ray while a ``ClusterMonitor`` watches.
    Returns (exit code, experiment dir, work dir, monitor)."""
    from raykd.ray_layer.tune import main as tune_main

    work = tmp_path_factory.mktemp("grid")
    prepared = marked_corpus(work)
    with ClusterMonitor(ray_session) as monitor:
        rc = tune_main(study_args(work, "grid", *GRID_ARGS, f"data.prepared={prepared}"))
    return rc, work / "exp" / "grid", work, monitor


PATIENT_MARKER = "标记QX7ZK9"  # planted in patient and doctor text; must never leave the data


def marked_corpus(work: Path) -> Path:
    """The generated corpus (600 dialogues) plus 150 processed-JSON dialogues whose every turn carries
    ``PATIENT_MARKER``, prepared (max length 64) into ``work/prepared``; returns that directory."""
    import json

    from raykd.data.shards import PrepareSettings, prepare
    from raykd.data.synth import write_corpus

    write_corpus(work / "raw" / "synth", 600, seed=0)
    dialogues = [[f"病人：{PATIENT_MARKER} 我头痛{i + 1}天了，晚上睡不好怎么办？",
                  f"医生：{PATIENT_MARKER} 建议先测血压，多休息，必要时做头颅CT检查。"] for i in range(150)]
    (work / "raw" / "marked.json").write_text(json.dumps(dialogues, ensure_ascii=False), encoding="utf-8")
    prepare(PrepareSettings(raw=[str(work / "raw")], out=str(work / "prepared"), max_length=64, quiet=True))
    return work / "prepared"

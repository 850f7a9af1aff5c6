"""Shared fixtures. Ray is started at most once per test session (``ray_session``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A local Ray (2 CPUs, dashboard on 127.0.0.1) shared by every integration test of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                 log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


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

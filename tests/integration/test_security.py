"""Security defaults that would fail if they regressed: the local Ray listens on 127.0.0.1 only."""

from __future__ import annotations

import ipaddress

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_every_ray_port_of_the_local_node_is_bound_to_loopback(ray_session):
    ray = ray_session
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    ray.get(ray.remote(lambda: 1).remote())  # at least one worker process is up
    me = psutil.Process()
    listening = []
    for p in [me] + me.children(recursive=True):
        try:
            listening += [(p.name(), c.laddr) for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    names = {n for n, _ in listening}
    assert {"gcs_server", "raylet"} <= names, names  # the check sees Ray's own daemons
    for name, addr in listening:
        ip = ipaddress.ip_address(addr.ip)
        ip = ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip
        assert ip.is_loopback, f"{name} listens on {addr.ip}:{addr.port}"


def test_patient_text_never_leaves_the_data(grid_experiment, tmp_path):
    """A marker planted in every turn of 150 dialogues appears in no experiment output (results,
    TensorBoard events, checkpoints' metadata, provenance), no report, no Ray log and not the teacher
    cache."""
    import ray

    from tests.conftest import PATIENT_MARKER, run_module

    rc, exp, work, _ = grid_experiment
    assert rc == 0
    marker = PATIENT_MARKER.encode("utf-8")
    assert sum(PATIENT_MARKER in q for q in _questions(work / "prepared")) >= 100  # it is really in the data
    assert run_module("raykd.report", str(exp), "--out", str(tmp_path / "report")).returncode == 0
    logs = []
    session = ray._private.worker._global_node.get_session_dir_path()
    cache = work / "prepared" / "teacher_cache"  # the teacher cache keeps token ids and states, never text
    assert any(cache.rglob("*.parquet"))
    for root in (exp, tmp_path / "report", __import__("pathlib").Path(session) / "logs", cache):
        for f in root.rglob("*"):
            if f.is_file() and f.stat().st_size < 200_000_000:
                logs.append(f)
                assert marker not in f.read_bytes(), f"patient text leaked into {f}"
    assert len(logs) > 20


def _questions(prepared):
    import pyarrow.parquet as pq

    from raykd.data.shards import SPLITS, load_manifest, shard_paths

    m = load_manifest(prepared)  # the shards only (the teacher cache beside them holds token ids, no text)
    return [q for s in SPLITS for f in shard_paths(prepared, s, m)
            for q in pq.read_table(f, columns=["question"]).column(0).to_pylist()]

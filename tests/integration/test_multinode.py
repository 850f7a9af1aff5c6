"""A two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and a second node,
each with 3 logical CPUs, in a subprocess of their own so the session's Ray is untouched): a
2-trial experiment submitted with ``--address`` runs one trial on each node (2-CPU workers fit one
per node) and finishes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, study_args
from tests.integration.test_tune import trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DRIVER = textwrap.dedent('''
    import json, os, socket, subprocess, sys
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # both nodes on 127.0.0.1 (see raykd.tune.loopback_only)
    from ray.cluster_utils import Cluster

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    args = json.loads(sys.argv[1])
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 3, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
        "node_ip_address": "127.0.0.1"})
    try:
        cluster.add_node(num_cpus=3, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        rc = subprocess.run([sys.executable, "-m", "raykd.tune", "--address", cluster.address, *args],
                            timeout=720).returncode
    finally:
        cluster.shutdown()
    sys.exit(rc)
''')


def test_two_trials_run_on_two_nodes(grid_experiment):
    _, _, work, _ = grid_experiment  # reuses its prepared data and teacher
    args = study_args(work, "two_nodes", f"data.prepared={work / 'prepared'}", "search.algorithm=grid", "train.steps=8", "train.eval_every=8",
                      "space={depth: {grid: [1, 3]}}", "train.cpus_per_worker=2")
    p = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)], capture_output=True, text=True,
                       timeout=840, cwd=ROOT)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    results = trial_results(work / "exp" / "two_nodes")
    assert len(results) == 2 and all(rows and rows[-1]["step"] == 8 for rows in results.values())
    nodes = {rows[-1]["node_id"] for rows in results.values()}
    assert len(nodes) == 2, nodes


NODE_KILLER = textwrap.dedent('''
    import json, os, socket, subprocess, sys, time
    from pathlib import Path
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    args, exp = json.loads(sys.argv[1]), Path(sys.argv[2])
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
        "node_ip_address": "127.0.0.1"})
    removed = None
    try:
        workers = [cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1") for _ in range(2)]
        cluster.wait_for_nodes()
        cluster.connect()
        proc = subprocess.Popen([sys.executable, "-m", "raykd.tune", "--address", cluster.address, *args])
        deadline = time.time() + 600
        while removed is None and time.time() < deadline and proc.poll() is None:
            # the first checkpoint is in storage (written directly, unlike Tune's synced results):
            # kill the node the trial's train worker runs on
            if any(exp.glob("trial_*/train/*/checkpoint_*")):
                alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
                if alive:
                    node = next(w for w in workers if w.node_id == alive[0].node_id)
                    cluster.remove_node(node, allow_graceful=False)  # its raylet and workers die
                    removed = node.node_id
                    print(f"removed node {removed}", file=sys.stderr, flush=True)
            time.sleep(0.3)
        rc = proc.wait(timeout=max(60, deadline - time.time()))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps({"removed": removed}))
    sys.exit(rc)
''')


def test_a_trial_survives_the_removal_of_its_node(grid_experiment):
    _, _, work, _ = grid_experiment
    exp = work / "exp" / "node_removed"
    args = study_args(work, "node_removed", f"data.prepared={work / 'prepared'}", "search.algorithm=grid",
                      "train.steps=120", "train.eval_every=8", "space={}", "train.cpus_per_worker=2",
                      "train.max_failures=2")
    p = subprocess.run([sys.executable, "-c", NODE_KILLER, json.dumps(args), str(exp)], capture_output=True, text=True,
                       timeout=840, cwd=ROOT)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    removed = json.loads(p.stdout.strip().splitlines()[-1])["removed"]
    assert removed
    (rows,) = [r for r in trial_results(exp).values() if r]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 120, steps  # resumed, never restarted from 0
    assert rows[0]["node_id"] == removed and rows[-1]["node_id"] != removed  # moved to the other node

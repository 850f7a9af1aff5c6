"""Node removal (issue #7): a 3-node Ray on this machine (head 1 CPU, two 3-CPU nodes), one trial
whose 2-CPU train worker fits on one node at a time; once its first checkpoint is in storage, the
node running the worker is removed (its raylet and workers killed). The trial's worker group
restarts on the other node from that checkpoint and finishes (`tests/integration/test_multinode.py`
runs this). The surviving node needs CPU beyond the worker's for the trial's Ray Data tasks: with
2-CPU nodes the restarted group waits forever for a node with 2 free CPUs.

    .venv/bin/python scripts/node_removal_probe.py [WORK_DIR] [KEY=VALUE ...]

Prints one JSON line ``{"removed": node id | null, "rc": the study's exit code}`` and exits with it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REGISTER_S = 2.0  # seconds from a checkpoint directory appearing to its registration, with margin


def main() -> int:
    from tests.conftest import study_args

    work = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".raykd" / "node_probe"
    args = study_args(work, "node_removed", "search.algorithm=grid", "train.steps=120", "train.eval_every=8",
                      "space={}", "train.cpus_per_worker=2", "train.max_failures=2", "experiment.references=false",
                      *sys.argv[2:])
    exp = work / "exp" / "node_removed"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on 127.0.0.1 (raykd.ray_layer.cluster.loopback_only)
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
        "node_ip_address": "127.0.0.1"})
    removed, rc = None, None
    try:
        nodes = [cluster.add_node(num_cpus=3, node_ip_address="127.0.0.1") for _ in range(2)]
        cluster.wait_for_nodes()
        cluster.connect()
        proc = subprocess.Popen([sys.executable, "-m", "raykd.tune", "--address", cluster.address, *args])
        deadline = time.time() + 600
        while removed is None and time.time() < deadline and proc.poll() is None:
            # the first checkpoint is in storage (written directly, unlike Tune's synced results) and,
            # REGISTER_S later, registered by the Train controller: remove the node the trial's train
            # worker runs on. Without the wait the node once went down between the worker persisting
            # the checkpoint and the controller registering it, and the group restarted from scratch.
            if any(exp.glob("trial_*/train/*/checkpoint_*")):
                time.sleep(REGISTER_S)
                alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
                node = next((n for n in nodes if alive and n.node_id == alive[0].node_id), None)
                if node is not None:
                    cluster.remove_node(node, allow_graceful=False)
                    removed = node.node_id
                    print(f"[probe] removed node {removed}", file=sys.stderr, flush=True)
            time.sleep(0.3)
        rc = proc.wait(timeout=max(60, deadline - time.time()))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps({"removed": removed, "rc": rc}))
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""Node-removal probe (issue #7, open): a 3-node Ray on this machine (head 1 CPU, two 2-CPU nodes),
one trial whose 2-CPU train worker fits on one node only; once its first checkpoint is in storage the
node running the worker is removed (raylet and workers killed). Expected: the trial resumes on the
other node. Observed with Ray 2.60 (2026-11-23): no progress after the removal until the cluster is
shut down 10 min later (ActorDiedError). Run from the repo root:

    .venv/bin/python scripts/node_removal_probe.py [WORK_DIR]
"""
import json as _json
import sys as _sys
from pathlib import Path as _Path

_ROOT = _Path(__file__).resolve().parents[1]
_sys.path.insert(0, str(_ROOT))
if __name__ == "__main__" and len(_sys.argv) < 3:
    from tests.conftest import study_args

    work = _Path(_sys.argv[1] if len(_sys.argv) > 1 else _ROOT / ".raykd" / "node_probe")
    args = study_args(work, "node_removed", "search.algorithm=grid", "train.steps=120", "train.eval_every=8",
                      "space={}", "train.cpus_per_worker=2", "train.max_failures=2")
    _sys.argv = [_sys.argv[0], _json.dumps(args), str(work / "exp" / "node_removed")]

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

"""TensorBoard output of a real experiment, read back with TensorBoard's own loader and served by a
real TensorBoard on 127.0.0.1: per-step scalars, one HParams session per trial carrying the
searched parameters and the seed, and the experiment's HParams columns."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.helpers.studies import trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _accumulate(path) -> EventAccumulator:
    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_event_files_hold_per_step_scalars_and_one_session_per_trial(grid_experiment):
    rc, exp, _, _ = grid_experiment
    results = trial_results(exp)
    assert rc == 0 and len(results) == 4
    for name, rows in results.items():
        assert rows[0]["step"] == 0  # the step-0 evaluation: where the student started
        ea = _accumulate(exp / name)
        scalars = ea.Tags()["scalars"]
        # per optimizer step: every loss term and the learning rate, x = step 1…16
        for tag in ("train/loss", "train/lr", "train/align", "train/relation", "train/tokens"):
            assert [e.step for e in ea.Scalars(tag)] == list(range(1, 17)), (name, tag)
        # each step's event carries the time the step ended (not the time of the report that sent it)
        walls = [e.wall_time for e in ea.Scalars("train/loss")]
        assert walls == sorted(walls) and len(set(walls)) == 16, name
        assert walls[7] <= ea.Scalars("val/semantic_alignment")[1].wall_time
        # the real (non-pad) tokens each step trained on: whole numbers, at most batch × 2 sides × max length
        assert all(e.value == int(e.value) and 1 <= e.value <= 16 * 2 * 64 for e in ea.Scalars("train/tokens")), name
        # each metric at each evaluation (x = step), test once at the end
        assert [e.step for e in ea.Scalars("val/semantic_alignment")] == [0, 8, 16]
        assert [e.value for e in ea.Scalars("val/semantic_alignment")] == pytest.approx(
            [r["val/semantic_alignment"] for r in rows], rel=1e-6)
        assert [e.step for e in ea.Scalars("test/semantic_alignment")] == [16]
        assert "tokens_per_s" in scalars and "ray/tune/val/semantic_alignment" in scalars  # Tune's own
        content = ea.PluginTagToContent("hparams")
        assert set(content) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}  # no per-trial experiment
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hp = {k: v.number_value for k, v in start.session_start_info.hparams.items()}
        assert hp == {"depth": rows[-1]["config"]["depth"], "seed": rows[-1]["config"]["seed"]}
        end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
        assert end.session_end_info.status == 1  # STATUS_SUCCESS
    root = _accumulate(exp)
    exp_pb = plugin_data_pb2.HParamsPluginData.FromString(root.PluginTagToContent("hparams")["_hparams_/experiment"])
    names = {h.name for h in exp_pb.experiment.hparam_infos}
    assert names == {"depth", "seed", "reference"}  # the reference trials (references/) share the table
    depth = next(h for h in exp_pb.experiment.hparam_infos if h.name == "depth")
    assert list(depth.domain_discrete.values) and [v.number_value for v in depth.domain_discrete.values] == [1, 3]
    metric_tags = {m.name.tag for m in exp_pb.experiment.metric_infos}
    assert {"ray/tune/val/semantic_alignment", "ray/tune/test/mrr_10", "ray/tune/best_metric"} <= metric_tags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_tensorboard(logdir):
    """A real TensorBoard on 127.0.0.1: (process, base URL), ready to answer."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
                             "--port", str(port), "--reload_interval", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/data/plugins_listing", timeout=5).read()
            return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    raise AssertionError("TensorBoard did not start within 90 s")


def hparams_post(url: str, route: str, request: dict) -> dict:
    req = urllib.request.Request(f"{url}/data/plugin/hparams/{route}", data=json.dumps(request).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_served_tensorboard_lists_every_trial_in_hparams(grid_experiment):
    _, exp, _, _ = grid_experiment
    results = trial_results(exp)
    proc, url = serve_tensorboard(exp)
    try:
        deadline = time.time() + 60
        while True:
            experiment = hparams_post(url, "experiment", {"experimentName": ""})
            groups = hparams_post(url, "session_groups", {
                "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                          "STATUS_RUNNING"],
                "colParams": [{"metric": {"tag": "ray/tune/val/semantic_alignment"}}], "startIndex": 0,
                "sliceSize": 100})
            if groups.get("totalSize") == 6 or time.time() > deadline:
                break
            time.sleep(2)
    finally:
        proc.kill()
        proc.wait()
    assert {h["name"] for h in experiment["hparamInfos"]} == {"depth", "seed", "reference"}
    assert groups["totalSize"] == 6  # 4 trials + the no_distill reference of each seed
    seen, refs = {}, set()
    for g in groups["sessionGroups"]:
        (session,) = g["sessions"]
        run = session["name"].split("/")[0]
        if run == "references":
            assert g["hparams"]["reference"] is True
            refs.add(g["hparams"]["seed"])
            continue
        value = next(m["value"] for m in session["metricValues"]
                     if m["name"]["tag"] == "ray/tune/val/semantic_alignment")
        seen[run] = ((g["hparams"]["depth"], g["hparams"]["seed"]), value)
    assert set(seen) == set(results) and refs == {0, 1}
    for name, rows in results.items():
        assert seen[name][0] == (rows[-1]["config"]["depth"], rows[-1]["config"]["seed"])
        assert seen[name][1] == pytest.approx(rows[-1]["val/semantic_alignment"], rel=1e-6)

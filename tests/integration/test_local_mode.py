"""``train.local_mode``: trials run in Ray Train's local mode inside Tune actors that Tune reuses.
Real studies on the session's Ray: the actor (one process) serves several trials, reports and
checkpoints reach Tune, per-step TensorBoard scalars are written, and a SIGKILLed or raising trial
is restarted by Tune from its last checkpoint and finishes its planned steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from raykd.ray_layer.tune import main as tune_main
from tests.conftest import run_module, study_args
from tests.helpers.studies import LOCAL, trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _checkpoints(trial_dir):
    return sorted(p for p in trial_dir.glob("checkpoint_*") if p.is_dir())


def _queue_actors() -> set[str]:
    """Ids of the ``_QueueActor``s (Tune's Train-result queue) the session's Ray has ever had."""
    from ray.util.state import list_actors

    return {a.actor_id for a in list_actors(filters=[("class_name", "=", "_QueueActor")], limit=10_000)}


def test_trials_share_one_warm_actor_and_report_to_tune(ray_session, grid_experiment):
    _, _, work, _ = grid_experiment  # its prepared data and teacher
    queues_before = _queue_actors()
    rc = tune_main(study_args(work, "local", f"data.prepared={work / 'prepared'}", *LOCAL,
                              "space={depth: {grid: [1, 2, 3]}}"))
    assert rc == 0
    exp = work / "exp" / "local"
    results = trial_results(exp)
    assert len(results) == 3
    pids = set()
    for name, rows in results.items():
        assert [r["step"] for r in rows] == [0, 4, 8, 12, 16], name
        final = rows[-1]
        assert final["world_size"] == 1 and "test/semantic_alignment" in final and "_step_history" not in final
        pids.add(final["worker_pid"])
        parts = [rows[1][f"startup/{k}_s"] for k in ("workers", "model", "first_batch")]
        assert min(parts) >= 0 and sum(parts) <= rows[1]["startup/first_step_s"]
        assert not (exp / name / "train").exists() or not _checkpoints(exp / name / "train")  # no Train run dir
        ckpts = _checkpoints(exp / name)  # Tune keeps the trial's checkpoints, pruned to checkpoint_keep
        assert len(ckpts) == 2, ckpts
        steps = sorted(torch.load(c / "state.pt", weights_only=True)["step"] for c in ckpts)
        assert steps == [12, 16] and all(load_file(str(c / "model.safetensors")) for c in ckpts)
        ea = EventAccumulator(str(exp / name), size_guidance={"scalars": 0})
        ea.Reload()
        assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, 17)), name  # written without a controller
        assert [e.step for e in ea.Scalars("val/semantic_alignment")] == [0, 4, 8, 12, 16]
    assert len(pids) == 1  # one actor process served every trial (Tune reuse_actors)
    # no Train→Tune result queue: Tune's session would poll it every 0.2 s while the trial trains
    assert not _queue_actors() - queues_before
    # a local-mode trial's checkpoints live in its Tune trial directory: export finds them there
    from transformers import AutoModelForMaskedLM

    from raykd.results.export import export

    out = export(exp, work / "local-student")
    assert "model.safetensors" in out["files"] and Path(out["checkpoint"]).parent.parent == exp
    assert AutoModelForMaskedLM.from_pretrained(work / "local-student").config.num_hidden_layers == 3
    # the report reads a local-mode study, and --resume of the finished study reruns nothing
    rep = run_module("raykd.report", str(exp), "--out", str(work / "local-report"))
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "| 1 | 1 |" in (work / "local-report" / "table.md").read_text()  # depth 1, one seed
    before = {k: len(v) for k, v in trial_results(exp).items()}
    assert tune_main(["--resume"] + study_args(work, "local", f"data.prepared={work / 'prepared'}", *LOCAL,
                                               "space={depth: {grid: [1, 2, 3]}}")) == 0
    assert {k: len(v) for k, v in trial_results(exp).items()} == before


def test_killed_and_raising_local_trials_restart_from_their_tune_checkpoint(ray_session, grid_experiment):
    _, _, work, _ = grid_experiment
    args = study_args(work, "local-faults", f"data.prepared={work / 'prepared'}", *LOCAL, "train.max_failures=1",
                      "space={train.fault: {grid: [sigkill@8, exception@8]}}")
    p = run_module("raykd.tune", "--address", ray_session.get_runtime_context().gcs_address, *args)
    assert p.returncode == 0, p.stderr[-3000:]
    exp = work / "exp" / "local-faults"
    results = trial_results(exp)
    assert len(results) == 2
    for name, rows in results.items():
        fault = rows[-1]["config"]["train.fault"]
        assert (exp / name / f"fault_{fault.split('@')[0]}_8.injected").exists()  # the fault really fired
        # resumed from the step-4 checkpoint (the fault fires before the step-8 report): each evaluation once
        assert [r["step"] for r in rows] == [0, 4, 8, 12, 16], (fault, [r["step"] for r in rows])
        assert "test/semantic_alignment" in rows[-1]
        if fault.startswith("sigkill"):
            assert rows[0]["worker_pid"] != rows[-1]["worker_pid"]  # a new actor took over

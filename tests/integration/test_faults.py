"""Fault injection on real processes: a train worker SIGKILLed mid-trial and one raising at a chosen
step both resume from their last reported checkpoint and finish with continuous metrics; a trial
with a real configuration error that only the trial can find (MiniLM relation heads that do not divide
the models' width, which load-time validation cannot know for a teacher it has not read) is marked
errored with its message while the others go on, and the CLI exits non-zero naming it. (The driver
kill is in test_tune.py; an unknown setting value such as a bogus ablation fails at load time since
#32: tests/unit/test_compare_config.py.)"""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_module, study_args
from tests.helpers.studies import trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def faulty_study(ray_session, grid_experiment):
    _, _, work, _ = grid_experiment  # its prepared data and teacher
    args = study_args(work, "faults", f"data.prepared={work / 'prepared'}", "search.algorithm=grid",
                      "train.steps=16", "train.eval_every=4", "train.max_failures=1", "experiment.references=false",
                      "method.name=minilm",
                      "space={method.params.relation_heads: {grid: [2, 3]}, train.fault: {grid: [sigkill@12, exception@12]}}")
    p = run_module("raykd.tune", "--address", ray_session.get_runtime_context().gcs_address, *args)
    return p, work / "exp" / "faults"


def test_killed_and_raising_workers_resume_from_their_checkpoint(faulty_study):
    p, exp = faulty_study
    finished = {}
    for name, rows in trial_results(exp).items():
        if rows and rows[-1]["config"]["method.params.relation_heads"] == 2:
            finished[rows[-1]["config"]["train.fault"]] = (exp / name, rows)
    assert set(finished) == {"sigkill@12", "exception@12"}, (p.stdout[-2000:], p.stderr[-2000:])
    for fault, (d, rows) in finished.items():
        kind = fault.split("@")[0]
        assert (d / f"fault_{kind}_12.injected").exists()  # the fault really fired
        # resumed from its last checkpoint that reached Train (step 8, or step 4 when the step-8 report was
        # still queued in the killed worker): every evaluation once, in order, from step 0 to the planned end
        assert [r["step"] for r in rows] == [0, 4, 8, 12, 16], (fault, [r["step"] for r in rows])
        assert all(r["train/loss"] > 0 for r in rows[1:]) and "test/semantic_alignment" in rows[-1]
        ckpts = sorted(q for q in (d / "train").glob("*/checkpoint_*") if q.is_dir())
        assert 1 <= len(ckpts) <= 2  # pruned to checkpoint_keep
        for c in ckpts:  # written atomically: every kept checkpoint loads
            assert load_file(str(c / "model.safetensors"))
            assert torch.load(c / "state.pt", weights_only=True)["step"] in (12, 16)


def test_an_erroring_trial_is_reported_and_the_cli_exits_nonzero(faulty_study, tmp_path):
    p, exp = faulty_study
    assert p.returncode == 1, p.stderr[-3000:]
    failed_lines = [x for x in p.stderr.splitlines() if x.startswith("trial ") and " failed: " in x]
    bad = "not divisible by 3 relation heads"
    assert len(failed_lines) == 2 and all(bad in x for x in failed_lines), p.stderr[-3000:]
    r = run_module("raykd.report", str(exp), "--out", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "report" / "results.csv", encoding="utf-8")))
    assert sorted(x["status"] for x in rows) == ["error", "error", "finished", "finished"]
    assert all(bad in x["error"] for x in rows if x["status"] == "error")
    assert "## Errored trials" in (tmp_path / "report" / "table.md").read_text(encoding="utf-8")


def set_trials_pending(exp) -> None:
    """Tune's saved state of experiment ``exp`` with every trial PENDING, as if its driver had died before
    recording them finished."""
    import json

    state_file = max(exp.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    for trial in state["trial_data"]:
        t = json.loads(trial[0])
        t["status"] = "PENDING"
        trial[0] = json.dumps(t)
    state_file.write_text(json.dumps(state))


def test_a_run_whose_final_report_never_reached_tune_sends_it_again_on_resume(ray_session, grid_experiment):
    """A driver stopped between a worker-group trial's final checkpoint (kept by its Train run) and Tune
    seeing the report sent with it (seen in CI: Ctrl+C, or a killed driver, at that moment): on --resume the
    trial's Train run restores that final checkpoint and has no step left to run. It must send the final
    report again — test metrics included — instead of finishing with its last row at an earlier step.
    The race is made certain here: a finished study's Tune state is set back to before its last report."""
    import json
    from pathlib import Path

    from raykd.ray_layer.tune import main as tune_main

    _, _, work, _ = grid_experiment
    args = study_args(work, "lost-report", f"data.prepared={work / 'prepared'}", "search.algorithm=grid",
                      "train.steps=4", "train.eval_every=2", "experiment.references=false", "space={}")
    assert tune_main(args) == 0
    exp = work / "exp" / "lost-report"
    ((name, rows),) = trial_results(exp).items()
    assert rows[-1]["step"] == 4 and "test/mrr@10" in rows[-1]
    # Tune's view as if the step-4 report had been lost: its trial pending, its rows up to step 2 — in storage and
    # in the driver's staging copy of this Ray session, which a restored trial keeps writing to (and syncs back)
    session = Path(ray_session._private.worker._global_node.get_session_dir_path())
    staged = list(session.glob(f"artifacts/*/lost-report/driver_artifacts/{name}/result.json"))
    assert staged
    for copy in [exp / name / "result.json", *staged]:
        copy.write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] < 4))
    set_trials_pending(exp)
    assert tune_main([*args, "--resume"]) == 0
    ((_, after),) = trial_results(exp).items()
    assert [r["step"] for r in after] == [0, 2, 4]
    assert after[-1]["test/mrr@10"] == rows[-1]["test/mrr@10"]  # the report the run sent with its final checkpoint
    # the other side of that race (seen in CI): the driver killed after Tune recorded the final report but before
    # it saved the trial as finished — the resumed run restores its final checkpoint and sends nothing again
    # (a second step-4 row would change a finished trial's results)
    recorded = (exp / name / "result.json").read_text()
    set_trials_pending(exp)
    assert tune_main([*args, "--resume"]) == 0
    assert (exp / name / "result.json").read_text() == recorded

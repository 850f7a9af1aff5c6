"""The experiment engine on the session's local Ray: real Tune studies of real Ray Train trials.
Every test is bounded by a timeout, so a resource deadlock (Ray Data starved of CPUs, placement
groups of stopped trials never freed) fails instead of hanging CI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from raykd.ray_layer.tune import main as tune_main
from tests.conftest import GRID_ARGS, TEST_BASE, study_args, wait_for_idle_cluster
from tests.helpers.studies import trial_results

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
SMOKE = str(Path(__file__).resolve().parents[2] / "search_spaces" / "smoke.yaml")


def study(tmp: Path, name: str, *sets: str) -> int:
    return tune_main(["--config", SMOKE, "--storage", str(tmp / "exp"), "--name", name, "--set",
                      f"data.work_dir={tmp / 'work'}", "data.synth.dialogs=600", "teacher.adapt.steps=30",
                      "train.eval_pairs=64", *TEST_BASE, *sets])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("tune")


@pytest.fixture(autouse=True)
def idle_cluster(ray_session):
    """Every test here starts on an idle cluster (the driver-kill and stop-signal tests leave a dead or stopped
    driver's trials behind them): a leak fails the next test at once, naming what holds the CPUs."""
    wait_for_idle_cluster(ray_session)


def test_grid_of_two_depths_over_two_seeds_runs_end_to_end(grid_experiment):
    rc, exp, _, _ = grid_experiment
    assert rc == 0
    results = trial_results(exp)
    assert len(results) == 4
    depths, configs = set(), set()
    for name, rows in results.items():
        assert [r["step"] for r in rows] == [0, 8, 16]  # step 0: where the student started
        assert "val/mrr@10" in rows[0] and "train/loss" not in rows[0]
        final = rows[-1]
        for split in ("val", "test"):
            for m in ("semantic_alignment", "representation_compactness", "structural_consistency", "mrr@10",
                      "recall@1", "retained_mrr"):
                assert isinstance(final[f"{split}/{m}"], float), (name, split, m)
        assert "test/semantic_alignment" not in rows[1]  # test is evaluated once, at the end
        for k in ("semantic_alignment", "mrr@10", "representation_compactness", "structural_consistency"):
            assert final[f"test/{k}_ci_low"] <= final[f"test/{k}"] <= final[f"test/{k}_ci_high"], k
        assert final["test/semantic_alignment_aggregated"] == final["test/semantic_alignment_aggregated"]
        assert final["test/mlm_loss"] > 0 and final["test/teacher_mlm_loss"] > 0
        parts = [rows[1][f"startup/{k}_s"] for k in ("workers", "model", "first_batch")]
        assert min(parts) >= 0 and sum(parts) <= rows[1]["startup/first_step_s"] < 600  # reported once, consistent
        assert "startup/first_step_s" not in rows[2]
        assert final["train/loss"] > 0 and final["tokens_per_s"] > 0 and "train/align" in final
        assert final["teacher_source"] == "cache"  # teacher.cache=true: the teacher never ran in the trial
        depths.add(final["config"]["depth"])
        configs.add((final["config"]["depth"], final["config"]["seed"]))
        assert final["test/params"] > 0 and final["test/speedup_b1"] > 0  # efficiency vs the teacher, once
        assert "_step_history" not in final  # per-step rows go to TensorBoard, not to Tune's results
        prov = json.loads((exp / name / "provenance.json").read_text())
        assert prov["config"]["method"]["depth"] == final["config"]["depth"] and prov["data_key"]
        train_dir = exp / name / "train" / name.removeprefix("trial_")
        assert 1 <= len([p for p in train_dir.glob("checkpoint_*") if p.is_dir()]) <= 2  # pruned to num_to_keep
    assert depths == {1, 3} and configs == {(1, 0), (1, 1), (3, 0), (3, 1)}


def test_single_machine_ray_starts_no_preemption_watcher_and_reuses_read_workers(grid_experiment):
    """``raykd.ray_layer.cluster.single_machine_ray`` reached the session's Ray: Train started no preemption
    watcher for the grid's worker-group trials, and their Ray Data reads (one or more per trial)
    ran in kept workers rather than one new process per trial."""
    from ray.util.state import list_actors, list_tasks

    assert grid_experiment[0] == 0
    assert not list_actors(filters=[("class_name", "=", "PreemptionWatcher")], limit=10_000)
    tasks = list_tasks(limit=10_000, detail=True)
    # each trial reads its train split (one Parquet file here) once: one read task per trial
    reads_by_pid: dict[int, int] = {}
    for t in tasks:
        if t.name.startswith("ReadParquet") and t.worker_pid:
            reads_by_pid[t.worker_pid] = reads_by_pid.get(t.worker_pid, 0) + 1
    assert sum(reads_by_pid.values()) >= 4, reads_by_pid
    assert max(reads_by_pid.values()) >= 2, reads_by_pid  # a kept process read for several trials


def test_prestarted_ray_data_services_are_the_actors_trials_used(grid_experiment):
    """``start_local_ray`` asked for Ray Data's service actors before any dataset ran; after the
    grid's trials read their data, each service is still one actor — the one ``prestart`` names —
    and the stats actor holds the trials' datasets (a renamed actor in a later Ray would show up
    here as a second one)."""
    import ray
    from ray.util.state import list_actors

    from raykd.ray_layer.cluster import prestart_ray_data_services

    assert grid_experiment[0] == 0
    handles = prestart_ray_data_services()
    assert set(handles) == {"_StatsActor", "_AutoscalingCoordinatorActor"}
    for cls, handle in handles.items():
        alive = list_actors(filters=[("class_name", "=", cls), ("state", "=", "ALIVE")], limit=100)
        assert [a.actor_id for a in alive] == [handle._actor_id.hex()], (cls, alive)
    assert len(ray.get(handles["_StatsActor"].get_datasets.remote())) >= 4  # one per grid trial at least


def test_resume_of_a_finished_study_reruns_nothing(grid_experiment):
    _, exp, work, _ = grid_experiment
    before = {k: len(v) for k, v in trial_results(exp).items()}
    rc = tune_main(["--resume"] + study_args(work, "grid", *GRID_ARGS))
    assert rc == 0
    assert {k: len(v) for k, v in trial_results(exp).items()} == before


def test_asha_stops_a_trial_early_and_the_best_is_confirmed(ray_session, work, capsys):
    rc = study(work, "asha", "search.num_samples=4", "train.steps=24", "train.eval_every=6",
               "search.scheduler.reduction_factor=2", "search.scheduler.grace_period=1",
               "search.confirm.top_k=1", "search.confirm.seeds=[1]", "experiment.references=false",
               "space={projection_dim: {choice: [8, 16, 32, 64]}, depth: {choice: [1, 2, 3]}}")
    assert rc == 0
    finals = {k: v[-1]["step"] for k, v in trial_results(work / "exp" / "asha").items() if v}
    assert len(finals) == 4
    assert min(finals.values()) < 24 and max(finals.values()) == 24, finals
    finals_rows = [v[-1] for v in trial_results(work / "exp" / "asha").values() if v]
    top = max(r["val/mrr@10"] for r in finals_rows)
    best = [{k: r["config"][k] for k in ("projection_dim", "depth")} for r in finals_rows if r["val/mrr@10"] == top]
    (confirm,) = trial_results(work / "exp" / "asha-confirm").values()
    assert confirm[-1]["step"] == 24 and confirm[-1]["config"]["seed"] == 1
    # the confirmed configuration is the best one (MRR@10 on 64 pairs can tie: any of the tied best)
    assert {k: confirm[-1]["config"]["confirm"][k] for k in ("projection_dim", "depth")} in best
    # where the time went: one line at the end, each phase that ran, the evaluation's share of the trials' time
    for rows in trial_results(work / "exp" / "asha").values():
        assert all(0 < r["time/eval_s"] <= r["time_total_s"] for r in rows[1:])
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[tune] time by phase:")]
    assert len(line) == 1, line
    m = re.fullmatch(r"\[tune\] time by phase: prepare \d+ s · ray start \d+ s · adaptation & scoring \d+ s · "
                     r"teacher cache \d+ s · references \d+ s · search (\d+) s · confirm \d+ s · total (\d+) s · "
                     r"evaluation (\d+) % of the trials' time", line[0])
    assert m and 0 < int(m.group(1)) <= int(m.group(2)) and 0 < int(m.group(3)) < 100, line[0]


def test_ddp_two_workers_see_disjoint_data(ray_session, work):
    rc = study(work, "ddp", "search.algorithm=grid", "train.steps=6", "train.eval_every=6", "train.num_workers=2",
               "train.cpus_per_worker=0.5", "train.threads_per_worker=1", "space={}", "experiment.references=false")
    assert rc == 0
    (rows,) = trial_results(work / "exp" / "ddp").values()
    final = rows[-1]
    assert final["world_size"] == 2
    assert final["data/pairs_seen"] >= 2 * 6 * 16 * 0.9  # both ranks trained on their own batches
    assert final["data/pairs_on_several_workers"] == 0


def test_resume_after_the_driver_is_killed_finishes_without_rerunning(ray_session, work):
    """A driver SIGKILLed after its first trial finished: --resume completes the rest and leaves the
    finished trial's results untouched."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sets = [f"data.work_dir={work / 'work'}", "data.synth.dialogs=600", "teacher.adapt.steps=30",
            "train.eval_pairs=64", "search.algorithm=grid", "train.steps=12", "train.eval_every=6",
            "space={depth: {grid: [1, 2, 3]}}", "experiment.references=false", *TEST_BASE]
    args = ["--config", SMOKE, "--storage", str(work / "exp"), "--name", "killed", "--set", *sets]
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "raykd.tune", "--address", address, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    exp = work / "exp" / "killed"
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline:
            done = [k for k, v in trial_results(exp).items() if v and v[-1].get("step") == 12] if exp.exists() else []
            if done:
                break
            time.sleep(2)
        else:
            pytest.fail("no trial finished in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished_before = {k: (exp / k / "result.json").read_text() for k in done}
    time.sleep(3)
    assert tune_main([*args, "--resume"]) == 0
    # A trial killed before its first report restarts from scratch; Tune may then give it a fresh,
    # suffixed directory beside the empty one. Count trials by id: each exactly once, all finished.
    finished = [rows[-1]["trial_id"] for rows in trial_results(exp).values() if rows]
    assert len(finished) == len(set(finished)) == 3
    assert all(rows[-1]["step"] == 12 for rows in trial_results(exp).values() if rows)
    for k, text in finished_before.items():
        assert (exp / k / "result.json").read_text() == text  # not rerun
    from raykd.results.report import build_report

    report = build_report(exp, work / "killed-report")
    assert report["trials"] == 3 and report["counts"]["finished"] == 3  # every trial exactly once


def test_a_stop_signal_stops_the_whole_study_and_resume_finishes_it(ray_session, work):
    """Ctrl+C (SIGINT to the driver) during the search: Tune saves its state and returns; the study then
    stops with exit 130 and one line saying so, instead of running its next phase on half an experiment
    (the confirmation here); --resume finishes every trial."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sets = [f"data.work_dir={work / 'work'}", "data.synth.dialogs=600", "teacher.adapt.steps=30",
            "train.eval_pairs=64", "search.algorithm=random", "search.num_samples=2", "search.scheduler.type=none",
            "train.steps=24", "train.eval_every=6", "space={depth: {choice: [1, 3]}}", "experiment.references=false",
            *TEST_BASE, "search.confirm.top_k=1", "search.confirm.seeds=[1]"]
    args = ["--config", SMOKE, "--storage", str(work / "exp"), "--name", "stopped", "--set", *sets]
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "raykd.tune", "--address", address, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    exp = work / "exp" / "stopped"
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if exp.exists() and any(rows for rows in trial_results(exp).values()):
                break  # the search has reported: interrupt it mid-way
            time.sleep(1)
        else:
            pytest.fail("no search trial reported in time")
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "search: interrupted" in lines[0] and "--resume" in lines[0]
    assert "Traceback" not in err and not (work / "exp" / "stopped-confirm").exists()
    time.sleep(3)
    assert tune_main([*args, "--resume"]) == 0
    finished = [rows for rows in trial_results(exp).values() if rows]
    assert len(finished) == 2 and all(rows[-1]["step"] == 24 for rows in finished)
    confirmed = trial_results(work / "exp" / "stopped-confirm")  # the next phase ran once the search was whole
    assert len(confirmed) == 1 and next(iter(confirmed.values()))[-1]["step"] == 24


@pytest.mark.parametrize("name", ["depth", "projection", "sampling", "baselines", "ablation"])
def test_each_small_search_space_runs_with_sizes_overridden(ray_session, work, name):
    """Each study file runs as written but smaller: one seed, a few steps, a small corpus, and its
    grid cut to its last value (the full grids are the users' studies, not CI's)."""
    import yaml

    path = Path(SMOKE).with_name(f"{name}.yaml")
    space = yaml.safe_load(path.read_text())["space"]
    small = {k: {kind: values[-1:]} for k, spec in space.items() for kind, values in spec.items()}
    rc = tune_main(["--config", str(path), "--storage", str(work / "exp"), "--name", f"file-{name}", "--set",
                    f"data.work_dir={work / 'work'}", "data.synth.dialogs=600", "teacher.adapt.steps=20",
                    "train.eval_pairs=64", "train.steps=4", "train.eval_every=4", "experiment.seeds=[0]",
                    "experiment.references=false", f"space={json.dumps(small)}"])
    assert rc == 0
    (rows,) = trial_results(work / "exp" / f"file-{name}").values()
    assert rows[-1]["step"] == 4 and isinstance(rows[-1]["test/semantic_alignment"], float)

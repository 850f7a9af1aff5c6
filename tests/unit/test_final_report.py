"""The report a run kept with its final checkpoint, sent again by a restart from it (``loop.kept_report``)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.unit


def _checkpoint(d, step: int, report: dict | None):
    from ray.train import Checkpoint

    torch.save({"step": step, "epoch": 1}, d / "state.pt")
    if report is not None:
        (d / "report.json").write_text(json.dumps(report))
    return Checkpoint.from_directory(str(d))


def test_the_kept_report_comes_back_without_its_per_step_rows(tmp_path):
    from raykd.ray_layer.loop import REPORT_FILE, checkpoint_state, kept_report
    from raykd.ray_layer.tblog import STEP_HISTORY_KEY

    assert REPORT_FILE == "report.json"
    report = {"step": 8, "world_size": 2, "test/mrr@10": 0.25, "val/mrr@10": float("nan"),
              STEP_HISTORY_KEY: [{"step": 7, "train/loss": 1.5}]}
    ckpt = _checkpoint(tmp_path, 8, report)
    got = kept_report(ckpt)
    assert set(got) == {"step", "world_size", "test/mrr@10", "val/mrr@10"}  # the TensorBoard rows were written once
    assert got["test/mrr@10"] == 0.25 and got["val/mrr@10"] != got["val/mrr@10"]  # NaN survives the round trip
    assert checkpoint_state(ckpt) == (8, 1)


def test_a_checkpoint_kept_without_a_report_gives_none(tmp_path):
    from raykd.ray_layer.loop import kept_report

    assert kept_report(_checkpoint(tmp_path, 5, None)) is None


def test_numpy_values_in_a_report_are_kept_as_plain_numbers():
    import numpy as np

    from raykd.ray_layer.loop import _plain

    text = json.dumps({"a": np.float32(0.5), "b": np.int64(3), "c": np.arange(2)}, default=_plain)
    assert json.loads(text) == {"a": 0.5, "b": 3, "c": [0, 1]}


def test_received_step_is_the_last_step_the_trials_stored_results_record(tmp_path):
    """What Tune had recorded of a trial before this attempt, read from its result.json in storage (a line cut
    off by a kill is skipped); -1 without a file or outside Tune."""
    from types import SimpleNamespace

    import pyarrow.fs

    from raykd.ray_layer.trial import received_step

    def ctx(trial_dir):
        storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(trial_dir))
        return SimpleNamespace(get_storage=lambda: storage)

    trial = tmp_path / "trial_x"
    assert received_step(ctx(trial)) == -1  # no result yet
    trial.mkdir()
    (trial / "result.json").write_text('{"step": 0}\n{"step": 6, "val/mrr@10": 0.1}\n{"step": 12, "test/mrr')
    assert received_step(ctx(trial)) == 6
    (trial / "result.json").write_text('{"step": 0}\n{"step": 6}\n{"step": 12, "test/mrr@10": 0.2}\n')
    assert received_step(ctx(trial)) == 12

    def outside():
        raise RuntimeError("Should not access `trial_fs_path` without setting `trial_dir_name`")

    assert received_step(SimpleNamespace(get_storage=outside)) == -1

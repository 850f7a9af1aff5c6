"""The report a run kept with its final checkpoint, sent again by a restart from it (``loop.final_result``)."""

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


def test_rank_0_sends_the_kept_report_and_the_others_the_step(tmp_path):
    from raykd.ray_layer.loop import REPORT_FILE, final_result

    assert REPORT_FILE == "report.json"
    report = {"step": 8, "world_size": 2, "test/mrr@10": 0.25, "_step_history": [{"step": 7, "train/loss": 1.5}]}
    ckpt = _checkpoint(tmp_path, 8, report)
    assert final_result(ckpt, 0, 2) == report
    assert final_result(ckpt, 1, 2) == {"step": 8, "world_size": 2}


def test_a_checkpoint_without_a_kept_report_gives_its_step(tmp_path):
    from raykd.ray_layer.loop import final_result

    assert final_result(_checkpoint(tmp_path, 5, None), 0, 1) == {"step": 5, "world_size": 1}


def test_numpy_values_in_a_report_are_kept_as_plain_numbers():
    import numpy as np

    from raykd.ray_layer.loop import _plain

    text = json.dumps({"a": np.float32(0.5), "b": np.int64(3), "c": np.arange(2)}, default=_plain)
    assert json.loads(text) == {"a": 0.5, "b": 3, "c": [0, 1]}

"""R: TensorBoard output of a study.

- ``TrialHParams``: Ray Tune's own TensorBoardX logger (``ray/tune/<metric>`` scalars per report),
  with its HParams session fixed: the searched parameters *and the seed* (confirm-phase
  configurations unpacked), the final metrics that matter, the real end status, and no per-trial
  experiment summary (Tune writes one per trial, and TensorBoard then picks an arbitrary trial's
  column set; raykd writes one for the whole experiment instead: ``write_experiment_summary``).
- ``StepScalars``: a Ray Train callback (runs in the trial's Train controller) that writes every
  optimizer step's loss terms and learning rate, and each evaluation's metrics, into the trial's
  directory (``*.steps`` event file, x-axis = optimizer step).
"""

from __future__ import annotations

import glob
import math
import os
import re

from ray.train.v2.api.callback import UserCallback
from ray.tune.logger import TBXLoggerCallback

STEP_HISTORY_KEY = "_step_history"  # per-step rows rank 0 attaches to a report; StepScalars pops them
TUNE_PREFIX = "ray/tune/"
SESSION_METRICS = ("val/", "test/", "best_metric", "step", "tokens_per_s", "train/loss")


def tb_tag(name: str) -> str:
    """The tag TensorBoardX writes for ``name`` (it replaces characters outside [-/\\w.] by '_':
    ``val/mrr@10`` → ``val/mrr_10``)."""
    return re.sub(r"[^-/\w\.]", "_", name)


def hparams_of(config: dict) -> dict:
    """The HParams of a trial from its Tune config: searched parameters (confirm-phase ones
    unpacked) and ``seed``; values TensorBoard can show (str, bool, float)."""
    flat = {**(config.get("confirm") or {}), **{k: v for k, v in config.items() if k != "confirm"}}
    out = {}
    for k, v in flat.items():
        if isinstance(v, (str, bool)):
            out[k] = v
        elif isinstance(v, (int, float)):
            out[k] = float(v)
        elif v is not None:
            out[k] = str(v)
    return out


def session_metric_names(result_keys) -> list[str]:
    """The Tune scalar tags an HParams session reports (val/*, test/*, best metric, steps, throughput)."""
    names = []
    for k in result_keys:
        short = k[len(TUNE_PREFIX):] if k.startswith(TUNE_PREFIX) else k
        if short.startswith(SESSION_METRICS[:2]) or short in SESSION_METRICS[2:]:
            names.append(TUNE_PREFIX + short)
    return sorted(names)


def _plugin_summary(tag: str, **content):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    data = HParamsPluginData(version=0, **content)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams",
                                                                  content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def session_summaries(hparams: dict, failed: bool):
    """(session start, session end) summaries of one HParams session."""
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import SessionEndInfo, SessionStartInfo

    ssi = SessionStartInfo()
    for k, v in hparams.items():
        if isinstance(v, str):
            ssi.hparams[k].string_value = v
        elif isinstance(v, bool):
            ssi.hparams[k].bool_value = v
        else:
            ssi.hparams[k].number_value = float(v)
    status = Status.Value("STATUS_FAILURE" if failed else "STATUS_SUCCESS")
    return (_plugin_summary("_hparams_/session_start_info", session_start_info=ssi),
            _plugin_summary("_hparams_/session_end_info", session_end_info=SessionEndInfo(status=status)))


def write_experiment_summary(exp_dir: str, space: dict, metrics: list[str]) -> str | None:
    """Write the experiment-level HParams summary (columns: the searched parameters with their
    domains, ``seed``, and ``metrics``) into ``exp_dir``; returns the event file (None for a
    remote storage URI or when one exists already)."""
    from tensorboardX import FileWriter
    from tensorboardX.proto.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName
    from google.protobuf import struct_pb2

    if "://" in exp_dir:
        return None
    os.makedirs(exp_dir, exist_ok=True)
    if glob.glob(os.path.join(exp_dir, "events.out.tfevents.*.hparams")):
        return None
    infos = []
    for name, spec in {**space, "seed": None}.items():
        kind, values = next(iter(spec.items())) if spec else ("number", None)
        if kind in ("choice", "grid") and values and all(isinstance(v, bool) for v in values):
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_BOOL")))
        elif kind in ("choice", "grid") and values and all(isinstance(v, str) for v in values):
            dom = struct_pb2.ListValue()
            dom.extend(values)
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_STRING"), domain_discrete=dom))
        elif kind in ("choice", "grid") and values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                           for v in values):
            dom = struct_pb2.ListValue()
            dom.extend([float(v) for v in values])
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_FLOAT64"), domain_discrete=dom))
        elif kind in ("choice", "grid"):
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_STRING")))
        else:
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_FLOAT64")))
    exp = Experiment(hparam_infos=infos, metric_infos=[MetricInfo(name=MetricName(tag=m)) for m in metrics])
    writer = FileWriter(exp_dir, filename_suffix=".hparams")
    writer.add_summary(_plugin_summary("_hparams_/experiment", experiment=exp))
    writer.close()
    return writer.get_logdir()


class TrialHParams(TBXLoggerCallback):
    """Tune's TensorBoardX logger, writing one correct HParams session per trial (see module doc)."""

    def log_trial_end(self, trial, failed: bool = False):
        self._failed = failed
        super().log_trial_end(trial, failed)

    def _try_log_hparams(self, trial, result: dict):
        names = set(session_metric_names(result))
        if not names:
            return
        start, end = session_summaries(hparams_of(trial.config), getattr(self, "_failed", False))
        writer = self._trial_writer[trial].file_writer
        writer.add_summary(start)
        writer.add_summary(end)


class StepScalars(UserCallback):
    """Per-step TensorBoard scalars of one trial, written by its Train controller into ``logdir``.

    Removes the per-step rows (``STEP_HISTORY_KEY``) from the reported metrics so that they never
    reach Tune's results; list it before ``TuneReportCallback``.
    """

    def __init__(self, logdir: str):
        self.logdir = logdir
        self._writer = None

    def after_report(self, run_context, metrics: list, checkpoint) -> None:
        rows = []
        for m in metrics:
            rows = m.pop(STEP_HISTORY_KEY, None) or rows
        if not metrics:
            return
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(self.logdir, filename_suffix=".steps", flush_secs=30)
        w = self._writer
        for row in rows:  # "time": when the step ended (the event's wall time)
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and math.isfinite(v):
                    w.add_scalar(k, v, global_step=row["step"], walltime=row.get("time"))
        last = metrics[0]
        step = last.get("step")
        for k, v in last.items():
            if (k.startswith(("val/", "test/")) or k in ("tokens_per_s", "best_metric")) and \
                    isinstance(v, (int, float)) and math.isfinite(v):
                w.add_scalar(k, v, global_step=step)
        w.flush()

    def after_exception(self, run_context, worker_exceptions) -> None:
        if self._writer is not None:
            self._writer.flush()

    def __getstate__(self):
        return {"logdir": self.logdir, "_writer": None}

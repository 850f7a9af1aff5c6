"""R: checkpoint pruning that survives restarts and stops.

Ray Train prunes a run's checkpoints to ``num_to_keep`` as it registers new ones, but a run whose
worker group was restarted, or a trial stopped by the scheduler while a checkpoint was being
persisted, leaves checkpoint directories that its checkpoint manager no longer lists. When a trial
ends (finished, stopped or errored), ``CheckpointPruner`` deletes every ``checkpoint_*`` directory
of the trial's Train run that the run's ``checkpoint_manager_snapshot.json`` does not list.
"""

from __future__ import annotations

import json
import logging

from ray.tune import Callback

SNAPSHOT = "checkpoint_manager_snapshot.json"
log = logging.getLogger(__name__)


def prune_unlisted_checkpoints(fs, run_path: str) -> list[str]:
    """Delete the ``checkpoint_*`` directories under ``run_path`` (a Train run directory on the
    pyarrow filesystem ``fs``) that its snapshot does not list; returns the deleted paths. Nothing
    is deleted when there is no readable snapshot."""
    import pyarrow.fs as pafs

    try:
        with fs.open_input_stream(f"{run_path}/{SNAPSHOT}") as f:
            listed = {r["checkpoint_dir_name"] for r in json.loads(f.read()).get("checkpoint_results", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    deleted = []
    for info in fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True)):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and name.startswith("checkpoint_") and name not in listed:
            fs.delete_dir(info.path)
            deleted.append(info.path)
    return deleted


def prune_experiment(path: str) -> int:
    """Prune every trial's Train runs of an experiment (a local path or storage URI) once nothing
    runs any more (a stopped worker may persist one last checkpoint after its trial ended);
    returns how many checkpoint directories were removed."""
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
        removed = 0
        for trial in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
            if trial.type != pafs.FileType.Directory or not trial.base_name.startswith("trial_"):
                continue
            for run in fs.get_file_info(pafs.FileSelector(f"{trial.path}/train", allow_not_found=True)):
                if run.type == pafs.FileType.Directory:
                    removed += len(prune_unlisted_checkpoints(fs, run.path))
        return removed
    except OSError as e:
        log.warning("%s: checkpoint pruning failed: %s", path, e)
        return 0


class CheckpointPruner(Callback):
    """Tune callback: when a trial ends, prune its Train run's unlisted checkpoints."""

    def _prune(self, trial) -> None:
        import pyarrow.fs as pafs

        storage = trial.storage
        fs, train_root = storage.storage_filesystem, f"{storage.trial_fs_path}/train"
        try:
            runs = [i.path for i in fs.get_file_info(pafs.FileSelector(train_root, allow_not_found=True))
                    if i.type == pafs.FileType.Directory]
            for run in runs:
                gone = prune_unlisted_checkpoints(fs, run)
                if gone:
                    log.info("trial %s: removed %d checkpoint(s) its run no longer lists", trial.trial_id, len(gone))
        except OSError as e:  # never fail a study over housekeeping
            log.warning("trial %s: checkpoint pruning failed: %s", trial.trial_id, e)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._prune(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._prune(trial)

"""R: Tune-level trial restarts that keep every logged result row.

When Tune restarts a trial that holds a Tune checkpoint (``train.local_mode`` trials do), its JSON
and CSV loggers first copy ``result.json`` and ``progress.csv`` back from the experiment's storage,
then append. The storage copy is synced from the driver only every sync period, so the rows logged
since the last sync would be lost (seen: a trial SIGKILLed at step 8 kept rows 8, 12, 16 but not
4). ``UploadLogsBeforeRestart`` uploads the driver's complete files to storage as Tune schedules
the restart, so the loggers restore exactly what they had written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ray.tune import Callback

LOG_FILES = ("result.json", "progress.csv")  # what Tune's JSON and CSV loggers restore from storage
log = logging.getLogger(__name__)


class UploadLogsBeforeRestart(Callback):
    """On a trial's recovery (errored, to be retried), copy its logger files from the driver's
    staging directory to its storage directory."""

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        import pyarrow.fs as pafs

        storage = trial.storage
        for name in LOG_FILES:
            local = Path(trial.local_path, name)
            if not local.exists():
                continue
            try:
                pafs.copy_files(str(local), f"{storage.trial_fs_path}/{name}",
                                destination_filesystem=storage.storage_filesystem)
            except OSError as e:  # the restart goes on; at worst its rows since the last sync are missing
                log.warning("could not upload %s of %s before its restart: %s", name, trial, e)

"""R: ``python -m raykd.cache import --workers N``: the source files converted in parallel by Ray Data
actors (``raykd.data.logprob_import.convert_file``, one file per task), each holding the study's
prepared-pair index once (put in the object store by the driver). The files are independent and each
writes its own parts and ``.done`` marker, so a killed import resumes the same way as the driver's."""

from __future__ import annotations

from raykd.data.logprob_import import FileJob, PreparedIndex


class _ConvertFiles:
    """Ray Data actor: a batch of file jobs → their counts (``convert_file`` each)."""

    def __init__(self, fn, index_ref):
        import ray

        self.fn, self.index = fn, ray.get(index_ref)

    def __call__(self, batch: dict) -> dict:
        out = [self.fn(job, self.index) for job in batch["job"]]
        return {"file_no": [j.file_no for j in batch["job"]], "counts": out}


def ray_data_mapper(workers: int):
    """A ``map_files`` for ``import_logprobs`` that runs the file jobs on ``workers`` Ray Data actors
    (one CPU each) and yields their counts in the jobs' order. Needs a running Ray."""
    def run(fn, jobs: list[FileJob], index: PreparedIndex):
        import ray

        if not jobs:
            return iter(())
        ds = ray.data.from_items([{"job": j} for j in jobs], override_num_blocks=len(jobs))  # RAY
        done = ds.map_batches(_ConvertFiles, fn_constructor_args=(fn, ray.put(index)), batch_size=1,
                              batch_format="numpy", concurrency=max(1, min(workers, len(jobs))), num_cpus=1).take_all()
        by_file = {int(r["file_no"]): r["counts"] for r in done}
        return iter([by_file[j.file_no] for j in jobs])

    return run

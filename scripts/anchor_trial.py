"""The anchors' ``kd_task`` workload (from the external anchors folder given by ``--anchors DIR``) run as raykd
trials, for ``bench.py study``.

Each trial is what ``raykd.ray_layer.trial.run_trial`` makes of a raykd trial, with the anchors' models, data,
optimiser and steps in place of raykd's objective: a Tune function trainable that fits
``raykd.ray_layer.trial.trainer_for``'s ``TorchTrainer`` (local mode in a reused actor, or a worker group)
over the study's Ray Data dataset of the anchor's training rows (built before the timed study, as
the anchors build their data before theirs); its worker function trains and reports the held-out
loss with a safetensors checkpoint through raykd's reporters. The worker process imports this
module by name (the anchors folder and ``scripts/`` are on the workers' ``PYTHONPATH``), so its
cached teacher and eval data outlive one trial exactly as the in-process anchor's do.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time

import torch


@functools.lru_cache(maxsize=1)
def workload():
    """(teacher, eval ids) of kd_task, built once per trial process (the anchors build them once
    per study, outside the timed study)."""
    import kd_task as K

    return K.make_teacher(), K.make_data()[1]


def ordered_rows():
    """The training rows in the order the in-process anchor visits them (``torch.randperm`` under
    the trial seed, ``STEPS`` batches): int64 [STEPS × BATCH, SEQ_LEN]. Built in the driver only
    (``train_dataset``), which needs no teacher."""
    import kd_task as K

    train_ids, _ = K.make_data()
    order = torch.randperm(len(train_ids), generator=torch.Generator().manual_seed(K.TRIAL_SEED))
    return train_ids[order[: K.STEPS * K.BATCH]].numpy()


def train_fn(config: dict) -> None:
    """Ray Train worker function: kd_task's trial (seed, student, AdamW, STEPS steps with clipping)
    on batches from this worker's dataset shard, then the held-out loss, reported once with a
    checkpoint. Reports ``eval_loss``, ``train_loss_last``, ``t_first_step`` (epoch seconds),
    ``steps_s``, ``eval_s`` and ``worker_pid``."""
    import kd_task as K
    import ray.train
    from safetensors.torch import save_model

    from raykd.ray_layer.loop import LocalReporter, train_report

    torch.set_num_threads(config["threads"])
    teacher, eval_ids = workload()
    K.seed_everything(K.TRIAL_SEED)
    model = K.make_student().train()
    opt = K.make_optimizer(model, config["learning_rate"], config["weight_decay"])
    shard = ray.train.get_dataset_shard("train")
    t_first, last, steps = None, float("nan"), 0
    for batch in shard.iter_torch_batches(batch_size=K.BATCH, dtypes=torch.int64):
        if t_first is None:
            t_first = time.time()
        loss = K.distill_loss(model, teacher, batch["data"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), K.MAX_GRAD_NORM)
        opt.step()
        last, steps = loss.item(), steps + 1
    t_eval = time.time()
    eval_loss = K.evaluate(model, teacher, eval_ids)
    result = {"eval_loss": eval_loss, "train_loss_last": last, "steps": steps, "t_first_step": t_first,
              "steps_s": t_eval - t_first, "eval_s": time.time() - t_eval, "worker_pid": os.getpid()}
    send = LocalReporter(None) if config["local_mode"] else train_report
    with tempfile.TemporaryDirectory() as d:
        save_model(model, os.path.join(d, "model.safetensors"))
        send(result, d)


def train_dataset():
    """The training rows in the anchor's batch order as one Ray Data dataset, built once per study
    before the timed study (the anchors build their data before theirs) and handed to every trial
    with ``tune.with_parameters``."""
    import ray.data

    return ray.data.from_numpy(ordered_rows())


def run_trial(params: dict, train_cfg, train_ds) -> None:
    """Tune function trainable: the trial's TorchTrainer over the study's dataset ``train_ds``."""
    import ray.data
    from ray import tune

    from raykd.ray_layer.trial import trainer_for

    ctx = tune.get_context()
    ray.data.DataContext.get_current().enable_progress_bars = False
    threads = train_cfg.threads_per_worker or int(train_cfg.cpus_per_worker or 1)
    loop_config = {**params, "threads": threads, "local_mode": train_cfg.local_mode}
    trainer_for(train_fn, loop_config, train_cfg, ctx.get_trial_id(), ctx.get_trial_dir(), {"train": train_ds}).fit()

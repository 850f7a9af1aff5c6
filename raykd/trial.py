"""R: one trial = one Ray Train ``TorchTrainer`` run inside a Tune function trainable.

``train_fn_per_worker`` is plain PyTorch with a few marked Ray touchpoints (# RAY): the dataset
shard, ``prepare_model`` (DDP when num_workers > 1), ``report`` with checkpoints, and resume from
``get_checkpoint``. ``run_trial`` is the Tune function trainable that builds and fits the trainer.

With ``train.local_mode`` the trainer runs in Ray Train's local mode (``num_workers=0``): the one
worker is the trial's own Tune actor, which Tune reuses for the next trial (``reuse_actors``), so a
trial starts without a Train controller, a worker group or fresh imports. Reports and checkpoints
then go straight to Tune (``ray.tune.report``) and a failed trial is restarted by Tune from its last
checkpoint (``ray.tune.get_checkpoint``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path

import torch

import ray.train
import ray.train.torch
from ray import tune
from ray.train import Checkpoint
from ray.tune.integration.ray_train import TuneReportCallback

from raykd import config as C
from raykd import metrics
from raykd.cache import CachedPairCollator, cache_use, cached_dataset, cached_targets, structural_layers
from raykd.data.sampling import ScoreTable, build_sampler
from raykd.data.shards import load_manifest, shard_paths, special_token_ids
from raykd.data.stream import PairCollator, department_index, split_datasets
from raykd.distill.methods import TokenIds, build_method, make_inputs
from raykd.distill.weighting import GradNormWeights
from raykd.models.student import build_student
from raykd.models.teacher import load_teacher
from raykd.monitoring import LiveMetrics
from raykd.precision import precision_policy
from raykd.tblog import STEP_HISTORY_KEY, StepScalars

DATA_CPUS = 0.25  # what each Ray Data read / map task reserves: never a whole CPU, so data always runs
TRIAL_DRIVER_CPUS = 0.05
ABLATIONS = ("none", "projection", "relation", "contrastive", "fusion", "aggregation", "dynamic_weights")
METRIC_KEYS = ("semantic_alignment", "representation_compactness", "structural_consistency", "mrr@10", "recall@1",
               "retained_mrr")
BOOTSTRAP = 200  # resamples of the evaluation pairs behind each final metric's 95 % CI
EVAL_SEED = 0  # which pairs are evaluation pairs, and the candidates of QA retrieval: the same for every trial
SCORED_SAMPLERS = ("entropy", "hard_negative", "domain_aware")
REFERENCE_KEY = "reference"  # a Tune param marking a reference trial (no_distill; its step 0 is `init`)


# ------------------------------------------------------------------------------------------ trial config
def trial_config(base: dict, params: dict) -> C.Config:
    """The resolved config of one trial: ``base`` (a Config as dict) with the searched ``params``
    (aliases or dotted keys; ``seed`` sets the trial seed; ``confirm`` holds a confirm-phase
    configuration) applied."""
    params = {**params.get("confirm", {}), **{k: v for k, v in params.items() if k != "confirm"}}
    overrides = {C.resolve_key(k): v for k, v in params.items() if k not in ("seed", REFERENCE_KEY)}
    data = C.apply_overrides(base, overrides)
    if params.get(REFERENCE_KEY):  # the plain student on its own task loss, on the study's unweighted data
        data["method"] = {**data["method"], "name": "no_distill", "depth": None, "params": {}}
        data["sampler"] = {"name": "uniform", "params": {}}
    if "seed" in params:
        data["experiment"]["seeds"] = [int(params["seed"])]
    return C._build(C.Config, data, "", "<trial>")


def method_kwargs(cfg: C.Config, n_departments: int) -> tuple[dict, bool]:
    """(keyword settings for ``build_method``, whether the student gets the aggregation module)."""
    params = dict(cfg.method.params)
    ablate = params.pop("ablate", None)
    kwargs = {"depth": cfg.method.depth, "projection_dim": cfg.method.projection_dim, "n_departments": n_departments,
              "seed": cfg.experiment.seeds[0], **params}
    aggregation = cfg.method.name == "structural"
    if ablate is not None:
        if ablate not in ABLATIONS:
            raise C.ConfigError(f"method.params.ablate: {ablate!r} is not one of {', '.join(ABLATIONS)}")
        kwargs.setdefault("dynamic_weights", True)  # the full method carries every module
        if ablate == "aggregation":
            aggregation = False
        elif ablate != "none":
            kwargs[ablate] = False
    return kwargs, aggregation


def _lr_lambda(warmup: int, total: int):
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total - s) / max(1, total - warmup))
    return factor


def _eval_batches(prepared: str, manifest: dict, split: str, pairs: int, batch_size: int = 64) -> list[dict]:
    """The split's evaluation pairs as collated batches: ``pairs`` of them chosen by a seeded hash of
    ``pair_id`` (``EVAL_SEED``), in that hash order — a random subset, not the first rows in source
    order, and the same for every trial of every study on this data."""
    import hashlib

    import pyarrow.parquet as pq

    t = pq.read_table(shard_paths(prepared, split, manifest), columns=["pair_id", "department", "q_input_ids",
                                                                       "a_input_ids"])
    ids = t.column("pair_id").to_pylist()
    order = sorted(range(len(ids)), key=lambda i: hashlib.blake2b(f"{EVAL_SEED}|eval|{ids[i]}".encode(),
                                                                   digest_size=8).digest())[:pairs]
    t = t.take(order)
    collate = PairCollator(manifest["tokenizer"]["pad_token_id"], department_index(manifest))
    cols = {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}
    return [collate({c: v[i: i + batch_size] for c, v in cols.items()}) for i in range(0, t.num_rows, batch_size)]


class _TeacherMemo:
    """Process-wide memo of what evaluation computes of the fixed teacher (its outputs on a split's
    pairs, its MLM loss, its scores as its own student), keyed by teacher, data, split and pair
    count: a reused Tune actor (Train local mode) evaluates the same teacher on the same pairs trial
    after trial, and the teacher is most of an evaluation's cost. Keeps the ``keep`` latest."""

    def __init__(self, keep: int = 12):
        self.keep, self.items = keep, OrderedDict()

    def get(self, key: tuple, compute):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = compute()
        while len(self.items) > self.keep:
            self.items.popitem(last=False)
        return value


TEACHER_MEMO = _TeacherMemo()


class Evaluation:
    """What rank 0 evaluates: the validation pairs at every report, the test pairs at the end (and
    at step 0 of a reference trial), the student alone, against the fixed teacher. The teacher's
    part is computed once per process (``TEACHER_MEMO``, keyed by ``teacher_key``) and reused."""

    def __init__(self, prepared: str, manifest: dict, pairs: int, tokens: TokenIds, vocab_size: int,
                 teacher_key: str | None = None):
        self.prepared, self.manifest, self.pairs = prepared, manifest, pairs
        self.tokens, self.vocab_size = tokens, vocab_size
        self.teacher_key = teacher_key
        self._local = _TeacherMemo(keep=8)
        self.val = _eval_batches(prepared, manifest, "validation", pairs)
        self._test: list | None = None

    @property
    def test(self) -> list[dict]:
        if self._test is None:
            self._test = _eval_batches(self.prepared, self.manifest, "test", self.pairs)
        return self._test

    def _memo(self, teacher, what: str, compute):
        """``compute()`` once per (teacher, data, pairs, what): per process when the teacher has a
        ``teacher_key`` (content-addressed), else for this Evaluation's lifetime only (an object id
        may be reused by another teacher once this one is gone)."""
        if self.teacher_key is None:
            return self._local.get((id(teacher), what), compute)
        return TEACHER_MEMO.get((self.teacher_key, self.manifest["key"], self.pairs, self.tokens.special, what),
                                compute)

    def _teacher_outputs(self, teacher, split: str) -> list:
        batches = self.val if split == "val" else self.test
        return self._memo(teacher, f"outputs/{split}", lambda: metrics.teacher_outputs(
            teacher, batches, next(teacher.parameters()).device, True, self.tokens.special))

    def split(self, student, teacher, split: str, bootstrap: int = 0, prefix: str = "") -> dict:
        """Metrics named ``<prefix><split>/<metric>`` (see ``metrics.evaluate``). Validation fits
        compactness on half of its pairs and scores the other half; test fits on the validation
        pairs. Test adds ``mlm_loss`` (held-out masked-LM loss of the model, nats per masked token,
        fixed masking) and the teacher's ``teacher_mlm_loss``."""
        if student is teacher:  # the teacher scored as its own student: the same numbers every time
            return dict(self._memo(teacher, f"self/{split}/{bootstrap}/{prefix}",
                                   lambda: self._split(student, teacher, split, bootstrap, prefix)))
        return self._split(student, teacher, split, bootstrap, prefix)

    def _split(self, student, teacher, split: str, bootstrap: int, prefix: str) -> dict:
        ev, fit = (self.val, None) if split == "val" else (self.test, self.val)
        cache = (self._teacher_outputs(teacher, split), None if fit is None else self._teacher_outputs(teacher, "val"))
        m = metrics.evaluate(student, teacher, ev, fit, seed=EVAL_SEED, special_ids=self.tokens.special,
                             bootstrap=bootstrap, teacher_cache=cache)
        if split == "test":
            m["mlm_loss"] = heldout_mlm_loss(_mlm_of(student), self.test, self.tokens, self.vocab_size)
            m["teacher_mlm_loss"] = self._memo(teacher, "mlm/test", lambda: heldout_mlm_loss(
                teacher, self.test, self.tokens, self.vocab_size))
        return {f"{prefix}{split}/{k}": float(v) for k, v in m.items()}


def _mlm_of(model):
    """The masked-LM model inside a method / Student / HF model."""
    model = getattr(model, "student", model)
    return getattr(model, "mlm", model)


@torch.no_grad()
def heldout_mlm_loss(mlm, batches: list[dict], tokens: TokenIds, vocab_size: int, seed: int = EVAL_SEED) -> float:
    """Masked-LM cross-entropy (nats per masked token) of ``mlm`` on these pairs (questions and
    answers), corrupted with a fixed-seed BERT masking: the same positions for every model."""
    gen = torch.Generator().manual_seed(seed)
    device = next(mlm.parameters()).device
    was = mlm.training
    mlm.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            inputs = make_inputs({k: v for k, v in batch.items() if torch.is_tensor(v)}, tokens, gen, corrupt=True,
                                 vocab_size=vocab_size)
            chosen = inputs["chosen"]
            if not chosen.any():
                continue
            logits = mlm(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["mask"].to(device)).logits
            total += float(torch.nn.functional.cross_entropy(logits[chosen.to(device)].float(),
                                                             inputs["ids"][chosen].to(device), reduction="sum"))
            count += int(chosen.sum())
    finally:
        mlm.train(was)
    return total / max(count, 1)


def efficiency_vs_teacher(student, teacher, batch_size: int, seq_len: int) -> dict:
    """``test/params``, ``test/teacher_params``, ``test/latency_ms_b{1,B}`` (ms per sample, student
    encoder alone) and ``test/speedup_b{1,B}`` (teacher ÷ student latency) on this worker's device."""
    sizes = (1, batch_size)
    s = metrics.efficiency(student.mlm.base_model, sizes, seq_len)
    tt = metrics.efficiency(teacher.base_model, sizes, seq_len)
    out = {"test/params": float(s["params"]), "test/teacher_params": float(tt["params"])}
    for b in sizes:
        out[f"test/latency_ms_b{b}"] = s[f"latency_ms_b{b}"]
        out[f"test/speedup_b{b}"] = tt[f"latency_ms_b{b}"] / max(s[f"latency_ms_b{b}"], 1e-9)
    return out


# ------------------------------------------------------------------------------------------ per worker
def train_fn_per_worker(config: dict) -> None:
    """Distil a student for ``train.steps`` optimizer steps on this worker's shard, evaluating every
    ``train.eval_every`` steps (reported to Tune with a checkpoint) and on test once at the end."""
    t_fn = time.time()
    cfg = C._build(C.Config, config["cfg"], "", "<trial>")
    t = cfg.train
    local = bool(config.get("local_mode"))  # Train local mode in a Tune actor: ray.train's context,
    if local:                                # report and checkpoint calls are refused there (Tune's are used)
        rank, world = 0, 1
    else:
        ctx = ray.train.get_context()  # RAY
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, t.threads_per_worker or int(t.cpus_per_worker)))  # Ray sets OMP_NUM_THREADS=1
    device = ray.train.torch.get_device()  # RAY
    precision = precision_policy(device, t.precision)
    seed = cfg.experiment.seeds[0]
    torch.manual_seed(seed)

    manifest = load_manifest(config["prepared"])
    tokens = TokenIds.from_manifest(manifest, special_token_ids(config["prepared"], manifest))
    checkpoint = tune.get_checkpoint() if local else ray.train.get_checkpoint()  # RAY: resume after a failure
    send = LocalReporter(config.get("trial_dir")) if local else train_report
    cache = config.get("cache")
    if cache is not None:
        collate = CachedPairCollator(tokens.pad, department_index(manifest), cache["layers"], cache["hidden"])
    else:
        collate = PairCollator(tokens.pad, department_index(manifest))
    shard = ray.train.get_dataset_shard("train")  # RAY
    sampler = config.get("sampler") and build_sampler(config["sampler"]["name"], ScoreTable(config["scores"]) if
                                                      config.get("scores") else None, seed, **config["sampler"]["params"])

    def epoch(index: int):
        """One pass over this worker's shard of the train split (shuffled globally, anew each epoch,
        by Ray Data), through the trial's sampler when it has one."""
        if not sampler:
            return shard.iter_torch_batches(batch_size=t.batch_size, collate_fn=collate)  # RAY
        return sampled_batches(shard, sampler, index, t.batch_size, collate)

    epoch_index = checkpoint_state(checkpoint)[1]
    first_epoch = FirstItemAhead(epoch(epoch_index))  # Ray Data starts while the models build

    teacher = load_teacher(config["teacher"], **config.get("teacher_load", {})).to(device).eval()
    teacher.requires_grad_(False)
    kwargs, aggregation = method_kwargs(cfg, len(manifest["departments"]))
    student = build_student(teacher, cfg.student.layers, cfg.student.hidden, aggregation=aggregation,
                            init_from_teacher=cfg.student.init_from_teacher)
    method = build_method(cfg.method.name, student, teacher.config, **kwargs)
    if local:  # one worker: nothing to wrap (prepare_model asks for the refused Train context)
        model = method.to(device)
    else:
        model = ray.train.torch.prepare_model(method, parallel_strategy_kwargs={"find_unused_parameters": True})  # RAY
    core = model.module if hasattr(model, "module") else model
    core.epoch = epoch_index  # the epoch the stream is in (the samplers' salt), saved in checkpoints
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(t.warmup_steps, t.steps))
    scaler = precision.grad_scaler()
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    step, best = 0, [None]  # best: the best validation metric so far, boxed for _report

    if checkpoint:
        with checkpoint.as_directory() as d:
            from safetensors.torch import load_model

            load_model(core, os.path.join(d, "model.safetensors"), device=str(device))
            state = torch.load(os.path.join(d, "state.pt"), map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["mask_generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if state.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        step, best[0] = int(state["step"]), state.get("best")
        if isinstance(core.weighting, GradNormWeights) and state.get("weighting"):
            core.weighting.load_state_dict(state["weighting"])

    t_model = time.time()
    evaluation = Evaluation(config["prepared"], manifest, t.eval_pairs, tokens, teacher.config.vocab_size,
                            config.get("teacher_key")) if rank == 0 else None
    if step == 0:  # where the student started: a result row at step 0 (not an ASHA rung: it schedules on steps)
        _report_start(core, teacher, evaluation, rank, world, config, send)
    if cache is not None:
        needed = set(core.teacher_layers()) | {teacher.config.num_hidden_layers}
        if not needed <= set(cache["layers"]):
            raise RuntimeError(f"teacher cache: this trial needs layers {sorted(needed)}, the dataset has {cache['layers']}")
    sums: dict[str, float] = {}
    step_sums: dict[str, float] = {}  # this optimizer step's loss terms, summed over its micro-steps
    history: list[dict] = []  # per-step scalars since the last report (→ TensorBoard, see StepScalars)
    gauges = LiveMetrics(config.get("trial_id", "")) if rank == 0 else None
    n_terms, tokens_seen, step_tokens, t_window = 0, 0, 0, None
    # where the seconds to the first optimizer step went, reported once (not after a restart from a checkpoint)
    startup: dict | None = None if step else {"t_fn": t_fn, "t_model": t_model}
    micro = 0
    seen_pairs: set[str] = set()
    while step < t.steps:
        batches_this_epoch = 0
        batches, first_epoch = first_epoch or epoch(epoch_index), None
        for batch in batches:
            batches_this_epoch += 1
            if t_window is None:
                t_window = time.perf_counter()
            if startup is not None and "t_batch" not in startup:
                startup["t_batch"] = time.time()
            seen_pairs.update(batch.pop("pair_id", ()))
            cached = batch.pop("teacher_hidden", None)
            if hasattr(core, "resample_batch"):  # DDK: rows redrawn by department sampling weight
                batch = core.resample_batch(batch, gen)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            core.set_progress(step / t.steps)
            inputs = make_inputs(batch, tokens, gen, corrupt=core.uses_mlm, vocab_size=teacher.config.vocab_size)
            last_micro = (micro + 1) % t.grad_accum == 0
            sync = model.no_sync() if (world > 1 and not last_micro and hasattr(model, "no_sync")) else nullcontext()
            with sync:
                with precision.autocast():
                    targets = core.teacher_targets(teacher, inputs) if cached is None else cached_targets(cached, device)
                    out = model(inputs, targets)
                scaler.scale(out["loss"] / t.grad_accum).backward()
            for k, v in out.items():
                x = float(v.detach())
                sums[k] = sums.get(k, 0.0) + x
                step_sums[k] = step_sums.get(k, 0.0) + x
            n_terms += 1
            step_tokens += int(inputs["mask"].sum())
            micro += 1
            if not last_micro:
                continue
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            lr = sched.get_last_lr()[0]
            sched.step()
            step += 1
            if hasattr(core, "update_domain_weights") and step % core.update_every == 0:
                _update_domain_weights(core, teacher, evaluation, tokens, rank, world)
            tokens_seen += step_tokens
            if startup is not None and "t_step" not in startup:
                startup["t_step"] = time.time()
            if rank == 0:
                row = {"step": step, "time": time.time(), "train/lr": lr, "train/tokens": step_tokens * world,
                       **{f"train/{k}": v / t.grad_accum for k, v in step_sums.items()}}
                history.append(row)
                gauges.set_step(step, row["train/loss"])
            step_sums, step_tokens = {}, 0
            if t.fault and rank == 0:
                inject_fault(t.fault, step, config.get("fault_dir"))
            if step % t.eval_every == 0 or step == t.steps:
                elapsed = time.perf_counter() - t_window
                result = {"step": step, "world_size": world, "train/loss": sums.pop("loss") / n_terms,
                          "lr": sched.get_last_lr()[0],
                          "tokens_per_s": tokens_seen * world / max(elapsed, 1e-9), "precision": precision.name,
                          "teacher_source": "cache" if cache is not None else "online"}
                result.update({f"train/{k}": v / n_terms for k, v in sums.items()})
                sums, n_terms, tokens_seen = {}, 0, 0
                final = step == t.steps
                if final:
                    result.update(_data_coverage(seen_pairs, world))
                if startup is not None:
                    result.update(startup_breakdown(startup, config.get("t_trial_start")))
                    startup = None
                result["node_id"] = ray.get_runtime_context().get_node_id()  # RAY: where this trial ran
                result["worker_pid"] = os.getpid()
                if rank == 0:
                    result[STEP_HISTORY_KEY], history = history, []
                _report(core, teacher, opt, sched, scaler, gen, step, result, rank, evaluation, config, t, final, best,
                        send)
                if gauges is not None:
                    gauges.set_report(result)
                t_window = None
            if step >= t.steps:
                break
        if batches_this_epoch == 0:
            raise RuntimeError(f"worker {rank}: its shard of the train split is empty (too few pairs for "
                               f"{world} workers?)")
        if step < t.steps:
            epoch_index += 1
            core.epoch = epoch_index  # checkpointed with the step: a restart resumes the epoch's sampling


SAMPLER_WINDOW = 4096  # rows a sampler sees at once (rounded up to whole training batches)


def sampled_batches(shard, sampler, epoch: int, batch_size: int, collate):
    """Training batches of one epoch: windows of the shard through ``sampler(window, epoch)``, cut
    into ``batch_size`` rows in the order the sampler returns (hard-negative groups stay whole;
    rows left over at a window's end lead the next window)."""
    import numpy as np

    window = batch_size * -(-SAMPLER_WINDOW // batch_size)
    carry = None
    for rows in shard.iter_batches(batch_size=window, batch_format="numpy"):  # RAY
        rows = sampler(rows, epoch)
        if carry is not None:
            rows = {k: np.concatenate([carry[k], v]) for k, v in rows.items()}
        n = len(rows["pair_id"])
        full = n - n % batch_size
        for i in range(0, full, batch_size):
            yield collate({k: v[i: i + batch_size] for k, v in rows.items()})
        carry = {k: v[full:] for k, v in rows.items()} if full < n else None
    if carry is not None:
        yield collate(carry)


def checkpoint_state(checkpoint) -> tuple[int, int]:
    """(optimizer step, epoch) a checkpoint was taken at ((0, 0) without one)."""
    if not checkpoint:
        return 0, 0
    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
    return int(state["step"]), int(state.get("epoch", 0))



class FirstItemAhead:
    """Iterates ``iterable`` with its first item fetched by a background thread from construction on,
    so that Ray Data's start-up (the split coordinator, the first read and collation) overlaps the
    worker's model build instead of following it. An error in that fetch is raised on iteration."""

    def __init__(self, iterable):
        import threading

        self._it = iter(iterable)
        self._first: list = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch, name="raykd-first-batch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first.append(next(self._it))
        except StopIteration:
            pass
        except BaseException as e:  # re-raised in the training thread
            self._error = e

    def __iter__(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        yield from self._first
        yield from self._it


def startup_breakdown(t: dict, t_trial_start: float | None) -> dict:
    """Seconds from the trial's start (Tune runs its function: its resources are free) to its first
    optimizer step, split into ``startup/workers_s`` (Train controller + worker group start, until
    this function runs), ``startup/model_s`` (teacher load, student and objective build, DDP wrap),
    ``startup/first_batch_s`` (validation batches read, then any wait left for the first batch, which
    a background thread fetches from the worker's start on) and
    ``startup/first_step_s`` (the total, to the end of the first optimizer step)."""
    t0 = t_trial_start if t_trial_start is not None else t["t_fn"]
    return {"startup/workers_s": t["t_fn"] - t0, "startup/model_s": t["t_model"] - t["t_fn"],
            "startup/first_batch_s": t["t_batch"] - t["t_model"], "startup/first_step_s": t["t_step"] - t0}


def inject_fault(spec: str, step: int, trial_dir: str | None) -> None:
    """``train.fault`` (recovery tests): at the given optimizer step, once per trial (a marker file in
    ``trial_dir``, see ``fault_dir``, remembers it across restarts), SIGKILL this worker process or raise."""
    fault = C.parse_fault(spec)
    if fault is None:
        raise C.ConfigError(f"train.fault: {spec!r} is not sigkill@STEP or exception@STEP")
    kind, at = fault
    if step != at or not trial_dir:
        return
    marker = Path(trial_dir, f"fault_{kind}_{at}.injected")
    if marker.exists():
        return
    marker.write_text(f"{kind} at step {at}, pid {os.getpid()}, {time.time():.3f}\n")
    if kind == "sigkill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault: exception at step {at}")


def _data_coverage(seen: set, world: int) -> dict:
    """Distinct training pairs this trial saw and how many were seen by more than one worker (0 when
    the workers' shards are disjoint, as Ray Data's equal split promises)."""
    if world == 1:
        return {"data/pairs_seen": len(seen), "data/pairs_on_several_workers": 0}
    import torch.distributed as dist

    sets: list = [None] * world
    dist.all_gather_object(sets, seen)
    union = set().union(*sets)
    return {"data/pairs_seen": len(union), "data/pairs_on_several_workers": sum(len(s) for s in sets) - len(union),
            "world_size": world}


def train_report(result: dict, checkpoint_dir: str | None) -> None:
    """Report ``result`` (and the checkpoint in ``checkpoint_dir``) from a Train worker to its
    controller, whose ``TuneReportCallback`` passes it on to Tune."""
    ray.train.report(result, checkpoint=Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)  # RAY


class LocalReporter:
    """Reports of a trial in Ray Train local mode: there is no controller to run the run's callbacks,
    so the per-step TensorBoard scalars are written here and the result and checkpoint go straight
    to Tune, which keeps ``num_to_keep`` checkpoints and restores the latest on a retry."""

    def __init__(self, trial_dir: str | None):
        self.step_scalars = StepScalars(trial_dir) if trial_dir else None

    def __call__(self, result: dict, checkpoint_dir: str | None) -> None:
        if self.step_scalars is not None:
            self.step_scalars.after_report(None, [result], None)
        else:
            result.pop(STEP_HISTORY_KEY, None)
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


def trial_resources(t: C.TrainConfig) -> dict:
    """Resources of a trial's Tune actor: in local mode the whole worker (it trains there), else a
    sliver for the function that fits the TorchTrainer (its workers reserve their own)."""
    if t.local_mode:
        return {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    return {"CPU": TRIAL_DRIVER_CPUS}


def _update_domain_weights(core, teacher, evaluation: Evaluation | None, tokens: TokenIds, rank: int,
                           world: int) -> None:
    """DDK's sampling weights from the validation discrepancy: measured on rank 0 (which holds the
    validation pairs), then broadcast so that every rank samples with the same weights."""
    if rank == 0:
        core.update_domain_weights(teacher, evaluation.val, tokens, teacher.config.vocab_size)
    if world > 1:
        import torch.distributed as dist

        dist.broadcast(core.dept_weight, src=0)
        dist.broadcast(core.discrepancy, src=0)


def _report_start(core, teacher, evaluation: Evaluation | None, rank: int, world: int, config: dict, send) -> None:
    """The step-0 report (every rank reports; rank 0 evaluates): the student as built, on validation.
    A reference trial also reports it on test (the ``init`` reference) and the teacher scored as its
    own student under ``teacher/val/…`` and ``teacher/test/…`` (the ``teacher`` reference)."""
    result = {"step": 0, "world_size": world, "node_id": ray.get_runtime_context().get_node_id(),  # RAY
              "worker_pid": os.getpid()}
    if rank == 0:
        result.update(evaluation.split(core, teacher, "val", BOOTSTRAP if config.get("reference") else 0))
        if config.get("reference"):
            result.update(evaluation.split(core, teacher, "test", BOOTSTRAP))
            for split in ("val", "test"):
                result.update(evaluation.split(teacher, teacher, split, BOOTSTRAP, prefix="teacher/"))
    send(result, None)


def _report(core, teacher, opt, sched, scaler, gen, step, result, rank, evaluation, config, t, final, best_box,
            send) -> None:
    """Evaluate (rank 0), checkpoint (rank 0) and report (every rank) through ``send``."""
    cfg_metric = config["metric"]
    with tempfile.TemporaryDirectory() as d:
        ckpt_dir = None
        if rank == 0:
            result.update(evaluation.split(core, teacher, "val", BOOTSTRAP if final else 0))
            v = result.get(cfg_metric)
            if v is not None and v == v:
                better = best_box[0] is None or (v > best_box[0] if config["mode"] == "max" else v < best_box[0])
                best_box[0] = v if better else best_box[0]
            result["best_metric"] = best_box[0]
            if final:
                result.update(evaluation.split(core, teacher, "test", BOOTSTRAP))
                result.update(efficiency_vs_teacher(core.student, teacher, t.batch_size, evaluation.manifest["max_length"]))
            from safetensors.torch import save_model

            save_model(core, os.path.join(d, "model.safetensors"))
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                        "mask_generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() and
                        next(core.parameters()).is_cuda else None, "step": step, "best": best_box[0],
                        "epoch": getattr(core, "epoch", 0),
                        "weighting": core.weighting.state_dict() if isinstance(core.weighting, GradNormWeights)
                        else None}, os.path.join(d, "state.pt"))
            ckpt_dir = d
        send(result, ckpt_dir)


# ------------------------------------------------------------------------------------------ Tune side
def provenance(cfg: C.Config, plan: dict, trial_id: str) -> dict:
    """What produced a trial: versions, git SHA, the resolved config, hashes of data / teacher / scores."""
    import transformers

    sha = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[1]).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    from raykd import __version__

    return {"trial_id": trial_id, "raykd": __version__, "git_sha": sha, "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "transformers": transformers.__version__,
            "config": C.to_dict(cfg), "seed": cfg.experiment.seeds[0], "data_key": plan["data_key"],
            "teacher_key": plan["teacher_key"], "teacher": plan["teacher"], "prepared": plan["prepared"],
            "scores": plan.get("scores")}


def trial_cache(cfg: C.Config, plan: dict) -> dict | None:
    """``{"layers", "hidden"}`` of the teacher cache this trial reads, or None when it runs the
    teacher online (no cache in the plan, or its method / sampler cannot use one: ``cache_use``)."""
    c = plan.get("cache")
    if not c or cache_use(cfg.method.name, cfg.sampler.name) is not None:
        return None
    return {"layers": structural_layers(c["teacher_layers"], cfg.student.layers, cfg.method.depth),
            "hidden": c["hidden"]}


def run_trial(params: dict, plan: dict) -> None:
    """Tune function trainable: resolve this trial's config, build its datasets and fit its TorchTrainer.
    Metrics reach Tune at every evaluation through ``TuneReportCallback`` (``LocalReporter`` in local mode)."""
    t_trial_start = time.time()
    ctx = tune.get_context()
    trial_id, trial_dir = ctx.get_trial_id(), ctx.get_trial_dir()
    cfg = trial_config(plan["base"], params)
    method_kwargs(cfg, 1)  # a bad method setting fails here, before any worker starts (and is not retried there)
    Path(trial_dir, "provenance.json").write_text(json.dumps(provenance(cfg, plan, trial_id), indent=1))
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    cache = trial_cache(cfg, plan)
    if cache is not None:
        ds = cached_dataset(plan["cache"]["dir"], cache["layers"], num_cpus=DATA_CPUS)
    else:
        ds = split_datasets(plan["prepared"], splits=("train",), num_cpus=DATA_CPUS)["train"]
    from ray.data import RandomSeedConfig

    # one global shuffle per epoch, reproducible under the trial seed and different each epoch: pairs of
    # one dialogue (adjacent in the shards) no longer share batches as false in-batch negatives
    ds = ds.random_shuffle(seed=RandomSeedConfig(seed=cfg.experiment.seeds[0], reseed_after_execution=True),
                           num_cpus=DATA_CPUS)
    sampler = None
    if cfg.sampler.name != "uniform":  # runs on the worker, which knows the epoch (see sampled_batches)
        if cfg.sampler.name in SCORED_SAMPLERS and not plan.get("scores"):
            raise RuntimeError(f"sampler {cfg.sampler.name}: the study has no teacher scores (scores/)")
        manifest = load_manifest(plan["prepared"])
        sampler = {"name": cfg.sampler.name,
                   "params": {"mask_id": manifest["tokenizer"]["mask_token_id"], "batch_size": cfg.train.batch_size,
                              "special_ids": special_token_ids(plan["prepared"], manifest), **cfg.sampler.params}}
    fault_dir = marker_dir(plan, ctx.get_experiment_name(), trial_dir) if cfg.train.fault else None
    loop_config = {"cfg": C.to_dict(cfg), "prepared": plan["prepared"], "teacher": plan["teacher"],
                   "teacher_key": plan.get("teacher_key"),
                   "teacher_load": plan.get("teacher_load", {}), "cache": cache, "metric": cfg.experiment.metric,
                   "mode": cfg.experiment.mode, "trial_id": trial_id, "trial_dir": trial_dir,
                   "t_trial_start": t_trial_start, "local_mode": cfg.train.local_mode, "fault_dir": fault_dir,
                   "reference": bool(params.get(REFERENCE_KEY)), "sampler": sampler, "scores": plan.get("scores")}
    trainer_for(train_fn_per_worker, loop_config, cfg.train, trial_id, trial_dir, {"train": ds}).fit()


def marker_dir(plan: dict, experiment: str, trial_dir: str) -> str:
    """Where a trial's fault markers live: its directory in the experiment's storage when that is a
    local path (the same for every attempt), else its Tune trial directory. Tune gives an attempt that
    runs in a reused actor a different local trial directory than one in a fresh actor."""
    storage = plan.get("storage")
    if not storage or "://" in storage:
        return trial_dir
    d = Path(storage, experiment, Path(trial_dir).name)
    d.mkdir(parents=True, exist_ok=True)
    return str(d)


def trainer_for(train_fn, loop_config: dict, t: C.TrainConfig, trial_id: str, trial_dir: str, datasets: dict):
    """The ``TorchTrainer`` of one trial: ``t.num_workers`` workers (DDP) with Train's and Tune's
    failure handling, its run stored under ``trial_dir/train``; in ``t.local_mode``, Train's local
    mode (``num_workers=0``: ``train_fn`` runs in this Tune actor and reports through ``LocalReporter``)."""
    if t.local_mode:  # RAY: Train's local mode, the worker is this Tune actor
        scaling = ray.train.ScalingConfig(num_workers=0)
        # local mode runs no Train callbacks; a TuneReportCallback would only start a queue actor that
        # Tune's session polls every 0.2 s for the whole trial (CPU taken from the training)
        callbacks = []
    else:
        scaling = ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                          resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})})
        callbacks = [StepScalars(trial_dir), TuneReportCallback()]
    return ray.train.torch.TorchTrainer(
        train_fn, train_loop_config=loop_config, scaling_config=scaling, datasets=datasets,
        run_config=ray.train.RunConfig(
            name=trial_id, storage_path=str(Path(trial_dir) / "train"), callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.checkpoint_keep)))

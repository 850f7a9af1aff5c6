"""R: the training loop every worker of a trial runs (``train_fn_per_worker``), in small parts.

Plain PyTorch with a few marked Ray touchpoints (# RAY): the dataset shard, ``prepare_model`` (DDP
when num_workers > 1), ``report`` with checkpoints, and resume from ``get_checkpoint``. The parts:
``Worker`` (who and where this worker is), ``TrainStream`` (its epochs of training batches),
``TrainState`` (model, optimizer, scheduler, scaler, generator, step, best: what a checkpoint holds;
it saves and restores itself), ``Meter`` (what is summed between reports), ``micro_step`` (one
forward/backward), ``optimizer_step`` and ``evaluate_and_report``.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

import ray
import ray.train
import ray.train.torch
from ray import tune
from ray.train import Checkpoint

from raykd import config as C
from raykd.train import parallel
from raykd.train.budget import shard_teacher
from raykd.train.engine import Engine, linear_warmup_decay
from raykd.data.sampling import ScoreTable, build_sampler
from raykd.data.shards import load_manifest, special_token_ids
from raykd.distill.methods import TokenIds, build_method, make_inputs
from raykd.distill.weighting import GradNormWeights
from raykd.evaluation.protocol import BOOTSTRAP, Evaluation, evaluation_for
from raykd.models.families import DEFAULT, family_of
from raykd.models.student import enable_checkpointing, manifest_tokens, student_for
from raykd.models.teacher import load_teacher, teacher_skeleton
from raykd.train.precision import device_memory_bytes, frozen_dtype, frozen_on, precision_policy
from raykd.ray_layer.cache.masked_lm import CachedPairCollator, cached_targets
from raykd.ray_layer.cache.causal_lm import CACHED_TOPK_KEYS, CausalCachedCollator, causal_cached_targets
from raykd.errors import RaykdError
from raykd.ray_layer.monitoring import LiveMetrics, peak_flops
from raykd.ray_layer.stream import CausalCollator, PairCollator, department_index
from raykd.ray_layer.tblog import STEP_HISTORY_KEY, StepScalars
from raykd.train.trial_spec import method_kwargs

REPORT_FILE = "report.json"  # beside a checkpoint's weights and state: the report it was sent with


# ------------------------------------------------------------------------------------------ the loop
def train_fn_per_worker(config: dict) -> None:
    """Distil a student for ``train.steps`` optimizer steps on this worker's shard, evaluating every
    ``train.eval_every`` steps (reported to Tune with a checkpoint) and on test once at the end."""
    t_fn = time.time()
    cfg = C._build(C.Config, config["cfg"], "", "<trial>")
    C.import_plugins(cfg.plugins, "<trial>", config.get("plugin_paths", ()))  # their registered objectives
    worker = Worker.join(config, cfg.train)
    seed = cfg.experiment.seeds[0]
    torch.manual_seed(seed)
    manifest = load_manifest(config["prepared"])
    tokens = TokenIds.from_manifest(manifest, special_token_ids(config["prepared"], manifest))
    checkpoint = tune.get_checkpoint() if worker.local else ray.train.get_checkpoint()  # RAY: resume after a failure
    at_step, epoch = checkpoint_state(checkpoint)
    kept = kept_report(checkpoint) if at_step >= cfg.train.steps else None
    if kept is not None:
        # the run had finished: its last checkpoint is the final one, whose report may never have reached Tune (a
        # driver stopped or killed between the two) — send it again instead of finishing with nothing reported,
        # unless Tune had recorded it (``trial.received_step``): a second copy would be a duplicate result row
        if config.get("received_step", -1) < at_step:
            worker.send(kept if worker.rank == 0 else {"step": at_step, "world_size": worker.world}, None)
        return
    stream = TrainStream(config, cfg.train, tokens, manifest, seed, epoch)
    teacher, state = build_state(config, cfg, worker, manifest, stream.index, seed)
    if checkpoint:
        state.restore(checkpoint, worker.device)
    t_model = time.time()
    run = Run(cfg, config, worker, tokens, teacher, manifest)
    try:  # the gauges end (and stop re-sending) whatever happens from here
        run.evaluate_sharded_teacher()
        if state.step == 0:  # where the student started: a result row at step 0 (not an ASHA rung: steps schedule it)
            report_start(state.eval_model(), run)
        run.check_cache_layers(state.core)
        # where the seconds to the first optimizer step went, reported once (not after a restart from a checkpoint)
        meter = Meter(startup=None if state.step else {"t_fn": t_fn, "t_model": t_model})
        train_steps(state, run, stream, meter)
    finally:
        if run.gauges is not None:
            run.gauges.end()


def train_steps(state: "TrainState", run: "Run", stream: "TrainStream", meter: "Meter") -> None:
    """The optimizer steps from ``state.step`` to ``train.steps``, epoch after epoch of ``stream``."""
    cfg, worker = run.cfg, run.worker
    while state.step < cfg.train.steps:
        batches = 0
        for batch in token_groups(stream.next_epoch(), state.core.family, cfg.train.grad_accum, worker.world,
                                  meter.micro):
            batches += 1
            meter.batch_arrived()
            if micro_step(state, batch, run, meter):
                optimizer_step(state, run, meter)
            if state.step >= cfg.train.steps:
                break
        if batches == 0:
            raise RuntimeError(f"worker {worker.rank}: its shard of the train split is empty (too few pairs for "
                               f"{worker.world} workers?)")
        if state.step < cfg.train.steps:
            state.core.epoch = stream.advance()  # checkpointed with the step: a restart resumes the epoch's sampling


@dataclass
class Worker:
    """Who and where this worker is: rank and world size, whether it runs in Train local mode (then
    it is the trial's Tune actor, rank 0 of 1), its device and precision, and how it reports."""
    rank: int
    world: int
    local: bool
    device: torch.device
    precision: object
    send: object  # send(result, checkpoint_dir)

    @classmethod
    def join(cls, config: dict, t: C.TrainConfig) -> "Worker":
        """This worker, with torch's threads set (Ray sets OMP_NUM_THREADS=1 in its workers)."""
        local = bool(config.get("local_mode"))  # Train local mode in a Tune actor: ray.train's context,
        if local:                                # report and checkpoint calls are refused there (Tune's are used)
            rank, world = 0, 1
        else:
            ctx = ray.train.get_context()  # RAY
            rank, world = ctx.get_world_rank(), ctx.get_world_size()
        # local mode on CPUs: the study's rule (config["threads"]); else one thread per CPU reserved (null: 1)
        torch.set_num_threads(max(1, t.threads_per_worker or config.get("threads") or int(t.cpus_per_worker or 1)))
        device = ray.train.torch.get_device()  # RAY
        send = LocalReporter(config.get("trial_dir")) if local else train_report
        family = config["cfg"].get("teacher", {}).get("family") or DEFAULT
        return cls(rank, world, local, device, precision_policy(device, t.precision, family), send)


class TrainStream:
    """This worker's epochs of training batches: its shard of the train split (shuffled globally,
    anew each epoch, by Ray Data), through the trial's sampler when it has one. The first epoch's
    first batch is fetched ahead, from construction on, while the models build."""

    def __init__(self, config: dict, t: C.TrainConfig, tokens: TokenIds, manifest: dict, seed: int, epoch: int):
        cache = config.get("cache")
        if config.get("template") is not None:  # a causal trial: prompt + response sequences
            from raykd.data.template import CausalTemplate

            template = CausalTemplate.from_dict(config["template"])
            view = config.get("teacher_view")  # the teacher's own tokenization rides along (its template)
            teacher_template = CausalTemplate.from_dict(view["template"]) if view else None
            self.collate = CausalCollator(template, department_index(manifest), teacher_template) if cache is None else \
                CausalCachedCollator(template, department_index(manifest), cache["layers"], cache["hidden"],
                                     **{k: cache[k] for k in CACHED_TOPK_KEYS if k in cache})
        elif cache is not None:
            self.collate = CachedPairCollator(tokens.pad, department_index(manifest), cache["layers"], cache["hidden"])
        else:
            self.collate = PairCollator(tokens.pad, department_index(manifest))
        self.shard = ray.train.get_dataset_shard("train")  # RAY
        s = config.get("sampler")
        self.sampler = s and build_sampler(s["name"], ScoreTable(config["scores"]) if config.get("scores") else None,
                                           seed, **s["params"])
        self.batch_size, self.index = t.batch_size, epoch
        self._ahead = FirstItemAhead(self._epoch(epoch))  # Ray Data starts while the models build

    def _epoch(self, index: int):
        if not self.sampler:
            return self.shard.iter_torch_batches(batch_size=self.batch_size, collate_fn=self.collate)  # RAY
        return sampled_batches(self.shard, self.sampler, index, self.batch_size, self.collate)

    def next_epoch(self):
        """The batches of the current epoch (the one fetched ahead the first time)."""
        batches, self._ahead = self._ahead or self._epoch(self.index), None
        return batches


    def advance(self) -> int:
        """Move to the next epoch; returns its index."""
        self.index += 1
        return self.index


def token_groups(batches, family, grad_accum: int, world: int, micro: int):
    """``batches`` with, for a family whose losses count tokens (``count_tokens``), each batch's
    ``num_tokens``: the counted tokens of its optimizer step's micro-batches summed over every rank
    (an all-reduce), divided by world × ``grad_accum`` — with the loop's usual division by
    ``grad_accum`` and DDP's gradient mean, every counted token of the step then weighs 1 / (the
    step's global count): the gradient of one big batch. Micro-batches are read a step ahead
    (``micro``: micro-steps done so far, so a step that spans two epochs is grouped as it runs; its
    part in the earlier epoch was normalised by that part's count)."""
    import itertools

    it = iter(batches)
    size = grad_accum - micro % grad_accum
    while True:
        group = list(itertools.islice(it, size))
        if not group:
            return
        counts = [family.count_tokens(b) for b in group]
        if counts[0] is not None:
            total = torch.tensor(float(sum(counts)))
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(total)  # RAY's process group: every rank reads the same number of batches
            for b in group:
                b["num_tokens"] = float(total) / (world * grad_accum)
        yield from group
        size = grad_accum


class TrainState:
    """What a checkpoint holds: the model (DDP-wrapped or not; ``core`` is the method itself), the
    optimizer, LR schedule, grad scaler, the masking generator, the optimizer step, the best
    validation metric so far and the stream's epoch (``core.epoch``). Saves and restores itself."""

    def __init__(self, model, engine: Engine, gen: torch.Generator):
        self.model, self.engine, self.gen = model, engine, gen
        self.opt, self.sched, self.scaler = engine.opt, engine.sched, engine.scaler
        self.core = model.module if hasattr(model, "module") else model
        self.step, self.best = 0, None
        self.replica = None  # FSDP: rank 0's unsharded copy (evaluation and checkpoints)
        self.sharded = parallel.is_sharded(model)

    def eval_model(self):
        """What rank 0 evaluates: the objective itself, or under FSDP its replica (synced by ``gather``)."""
        return self.replica if self.sharded else self.core

    def gather(self) -> dict | None:
        """FSDP: the full weights loaded into rank 0's replica and the full optimizer state returned
        (a collective: every rank calls it before a report); None otherwise."""
        if not self.sharded:
            return None
        model_sd, optim_sd = parallel.full_state(self.model, self.opt)
        if self.replica is not None:
            self.replica.load_state_dict(model_sd)
        return optim_sd

    def improve(self, value, mode: str) -> None:
        """Keep ``value`` as the best when it beats the best so far (NaN never does)."""
        if value is not None and value == value:
            if self.best is None or (value > self.best if mode == "max" else value < self.best):
                self.best = value

    def save(self, d: str, optim_sd: dict | None = None) -> None:
        """Write ``model.safetensors`` and ``state.pt`` into directory ``d`` (FSDP: the replica's full
        weights and the gathered ``optim_sd``)."""
        from safetensors.torch import save_model

        core = self.core
        save_model(self.eval_model(), os.path.join(d, "model.safetensors"))
        torch.save({"optimizer": optim_sd if self.sharded else self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(),
                    "scaler": self.scaler.state_dict(), "mask_generator": self.gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() and
                    next(self.eval_model().parameters()).is_cuda else None, "step": self.step, "best": self.best,
                    "epoch": getattr(core, "epoch", 0),
                    "weighting": core.weighting.state_dict() if isinstance(core.weighting, GradNormWeights)
                    else None}, os.path.join(d, "state.pt"))

    def restore(self, checkpoint, device: torch.device) -> None:
        """Load a checkpoint written by ``save`` (weights, optimizer, schedule, scaler, RNGs, step, best)."""
        with checkpoint.as_directory() as d:
            from safetensors.torch import load_file, load_model

            if self.sharded:  # every rank reads the full weights and keeps its shard; rank 0 fills its replica
                full = load_file(os.path.join(d, "model.safetensors"))
                if self.replica is not None:
                    load_model(self.replica, os.path.join(d, "model.safetensors"), device=str(device))
            else:
                load_model(self.core, os.path.join(d, "model.safetensors"), device=str(device))
            state = torch.load(os.path.join(d, "state.pt"), map_location=device, weights_only=True)
        if self.sharded:
            parallel.load_full_state(self.model, self.opt, full, state["optimizer"])
        else:
            self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.gen.set_state(state["mask_generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if state.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        self.step, self.best = int(state["step"]), state.get("best")
        if isinstance(self.core.weighting, GradNormWeights) and state.get("weighting"):
            self.core.weighting.load_state_dict(state["weighting"])


def build_state(config: dict, cfg: C.Config, worker: Worker, manifest: dict, epoch: int, seed: int):
    """(the frozen teacher on the worker's device — or sharded over the worker group, ``teacher.shard`` —,
    a fresh ``TrainState``): the student built from the teacher (or its own spec), the objective around
    it (DDP-wrapped or FSDP-sharded across several workers), AdamW, the schedule."""
    t = cfg.train
    kwargs, aggregation = method_kwargs(cfg, len(manifest["departments"]))
    # a student of its own (student.spec) needs none of the teacher's weights: a teacher that must be sharded
    # is then read by rank 0 alone and broadcast shard by shard
    teacher = teacher_from_rank0(config, cfg, worker) if cfg.student.spec else None
    if teacher is None:
        teacher = load_teacher(config["teacher"], **config.get("teacher_load", {}))  # on CPU
        # copies the fp32 weights it is cut from; with a tokenizer of its own, all but the embeddings and head
        student = student_for(teacher, cfg.student, aggregation,
                              tokens=manifest_tokens(manifest) if config.get("teacher_view") else None)
        # frozen from here on; bf16 weights for a causal teacher on CUDA (half the memory); sharded over the
        # worker group when it must be (teacher.shard): then each rank moves only its shards to its GPU
        sharded = not worker.local and teacher_must_shard(cfg, worker, teacher)
        teacher = frozen_on(teacher, torch.device("cpu") if sharded else worker.device, worker.precision,
                            cfg.teacher.family)
        if sharded:
            teacher = parallel.shard_frozen(teacher, family_of(teacher).blocks(teacher))
    else:
        student = student_for(teacher, cfg.student, aggregation)  # loaded from its spec
    if t.gradient_checkpointing:  # recompute each block in backward (HF's non-reentrant checkpointing)
        enable_checkpointing(student.mlm)
    method = build_method(cfg.method.name, student, teacher.config, **kwargs)
    method.vocab = int(manifest["tokenizer"]["vocab_size"])  # logits compared over the tokenizer's real vocabulary
    method.chunk_tokens = cfg.train.chunked_loss_tokens
    if config.get("teacher_view"):  # the teacher's logits are compared over its own tokenizer's vocabulary
        method.teacher_vocab = int(config["teacher_view"]["vocab"])
        if hasattr(method, "shared"):  # gold: the entries both vocabularies hold under one string
            from raykd.data.teacher_view import shared_vocabulary

            method.shared = shared_vocabulary(config["teacher_view"]["prepared"])
    replica = None
    if worker.local:  # one worker: nothing to wrap (prepare_model asks for the refused Train context)
        model = method.to(worker.device)
    elif t.strategy == "fsdp":  # FSDP2 over the worker group; rank 0 evaluates an unsharded replica
        method.to(worker.device)
        replica = copy.deepcopy(method).eval() if worker.rank == 0 else None
        model = parallel.shard(method, student.family.blocks(student.mlm))
    else:
        model = ray.train.torch.prepare_model(method, parallel_strategy_kwargs={"find_unused_parameters": True})  # RAY
    core = model.module if hasattr(model, "module") else model
    core.epoch = epoch  # the epoch the stream is in (the samplers' salt), saved in checkpoints
    engine = Engine(model, lr=t.lr, weight_decay=t.weight_decay, schedule=linear_warmup_decay(t.warmup_steps, t.steps),
                    grad_accum=t.grad_accum, scaler=worker.precision.grad_scaler())
    gen = torch.Generator().manual_seed(seed * 1000 + worker.rank)
    state = TrainState(model, engine, gen)
    state.replica = replica
    return teacher, state


def teacher_must_shard(cfg: C.Config, worker: Worker, teacher) -> bool:
    """Whether this trial shards its frozen teacher over its workers (``budget.shard_teacher`` on the
    teacher's real size in the dtype ``frozen_on`` gives it and this worker's GPU memory)."""
    params = sum(p.numel() for p in teacher.parameters())
    size = params * frozen_dtype(worker.precision, cfg.teacher.family).itemsize
    return shard_teacher(cfg.teacher.shard, cfg.train.strategy, cfg.teacher.family, worker.world, size,
                         device_memory_bytes(worker.device))


def teacher_from_rank0(config: dict, cfg: C.Config, worker: Worker):
    """The frozen teacher sharded over the worker group with its weights read by rank 0 alone
    (``parallel.shard_frozen_from_rank0``; the others build it from its config on the meta device),
    or None when it need not be sharded (``teacher_must_shard``)."""
    if worker.local:
        return None
    load = config.get("teacher_load", {})
    dtype = frozen_dtype(worker.precision, cfg.teacher.family)
    skeleton = teacher_skeleton(config["teacher"], **load).eval().to(dtype)
    if not teacher_must_shard(cfg, worker, skeleton):
        return None
    full = frozen_on(load_teacher(config["teacher"], **load), torch.device("cpu"), worker.precision,
                     cfg.teacher.family) if worker.rank == 0 else None
    return parallel.shard_frozen_from_rank0(skeleton, full, family_of(skeleton).blocks(skeleton), worker.device)


class Run:
    """What stays fixed through a trial's loop: its config, this worker, the token ids, the frozen
    teacher, the evaluation (rank 0), the teacher cache it reads and the live gauges (rank 0)."""

    def __init__(self, cfg: C.Config, config: dict, worker: Worker, tokens: TokenIds, teacher, manifest: dict):
        self.cfg, self.t, self.config, self.worker, self.tokens, self.teacher = cfg, cfg.train, config, worker, \
            tokens, teacher
        self.cache = config.get("cache")
        # rank 0 evaluates; a sharded teacher's part of it is computed by every rank together (evaluate_sharded_teacher)
        self.teacher_sharded = parallel.is_sharded(teacher)
        self.evaluation = evaluation_for(cfg.teacher.family, config["prepared"], manifest, self.t.eval_pairs,
                                         tokens=tokens, vocab_size=teacher.config.vocab_size,
                                         template=config.get("template"), teacher_key=config.get("teacher_key"),
                                         teacher_view=config.get("teacher_view")) \
            if worker.rank == 0 or self.teacher_sharded else None
        self.eval_s = 0.0  # seconds rank 0 spent evaluating so far (reported as time/eval_s)
        self.step_flops = _step_flops(cfg)  # --dry-run's model of one optimizer step (None: shapes unknown here)
        # the dense bf16 peak of the trial's GPUs (None on CPU and on GPUs whose peak raykd does not know)
        peak = peak_flops(torch.cuda.get_device_name(worker.device)) if worker.device.type == "cuda" else None
        self.gpu_peak = peak * worker.world if peak else None
        # last: once built, its re-sending thread runs until train_fn_per_worker's finally ends it
        self.gauges = LiveMetrics(config.get("trial_id", ""), cfg.method.name, config.get("role", "search")) \
            if worker.rank == 0 else None

    def evaluate_sharded_teacher(self) -> None:
        """A sharded teacher's part of the evaluation (its scores, generations and latency), computed by
        every rank together — each of its forward passes is a collective — and kept by the evaluation
        for rank 0's reports (``teacher_eval_s``: its seconds). Nothing for an unsharded teacher."""
        if self.teacher_sharded:
            t0 = time.perf_counter()
            self.evaluation.teacher_part(self.teacher, self.evaluation.manifest["max_length"])
            self.teacher_eval_s = time.perf_counter() - t0

    def check_cache_layers(self, core) -> None:
        """Refuse a teacher cache that lacks a layer this trial's objective reads."""
        if self.cache is not None and (self.cache["layers"] or self.cache.get("kind") != "topk"):
            needed = set(core.teacher_layers()) | {self.teacher.config.num_hidden_layers}
            if not needed <= set(self.cache["layers"]):
                raise RuntimeError(f"teacher cache: this trial needs layers {sorted(needed)}, the dataset has "
                                   f"{self.cache['layers']}")


@dataclass
class Meter:
    """What a worker sums between reports: loss terms per micro-step (``sums``, ``n_terms``) and per
    optimizer step (``step_sums``), tokens, the per-step rows for TensorBoard (``history``), the
    pairs seen, the micro-step count and, once, where the start-up seconds went (``startup``)."""
    startup: dict | None
    sums: dict = field(default_factory=dict)
    step_sums: dict = field(default_factory=dict)  # this optimizer step's loss terms, summed over its micro-steps
    history: list = field(default_factory=list)  # per-step scalars since the last report (→ TensorBoard)
    seen_pairs: set = field(default_factory=set)
    n_terms: int = 0
    tokens_seen: int = 0
    step_tokens: int = 0
    window_pairs: int = 0  # training pairs this worker has seen since the last report
    window_steps: int = 0  # optimizer steps since the last report
    micro: int = 0
    t_window: float | None = None

    def batch_arrived(self) -> None:
        if self.t_window is None:
            self.t_window = time.perf_counter()
        if self.startup is not None and "t_batch" not in self.startup:
            self.startup["t_batch"] = time.time()

    def add(self, out: dict) -> None:
        """Add one micro-step's loss terms."""
        for k, v in out.items():
            x = float(v.detach())
            self.sums[k] = self.sums.get(k, 0.0) + x
            self.step_sums[k] = self.step_sums.get(k, 0.0) + x
        self.n_terms += 1


def micro_step(state: TrainState, batch: dict, run: Run, meter: Meter) -> bool:
    """Forward and backward of one micro-batch (teacher targets from the cache or the teacher online);
    returns whether it completes an optimizer step's gradient accumulation."""
    core, t, w = state.core, run.t, run.worker
    meter.seen_pairs.update(batch.pop("pair_id", ()))
    cached = batch.pop("teacher_hidden", None)
    cached_causal = batch.pop("teacher_cached", None)
    num_tokens = batch.pop("num_tokens", None)
    if hasattr(core, "resample_batch"):  # DDK: rows redrawn by department sampling weight
        batch = core.resample_batch(batch, state.gen)
    batch = {k: ({kk: vv.to(w.device, non_blocking=True) for kk, vv in v.items()} if isinstance(v, dict)
                 else v.to(w.device, non_blocking=True)) for k, v in batch.items()}  # a dict: the teacher's tokens
    core.set_progress(state.step / t.steps)
    inputs = make_inputs(batch, run.tokens, state.gen, corrupt=core.uses_mlm,
                         vocab_size=run.teacher.config.vocab_size, family=core.family)
    if num_tokens is not None:
        inputs["num_tokens"] = num_tokens
    last_micro = (meter.micro + 1) % t.grad_accum == 0
    if state.sharded:  # FSDP: reduce-scatter the gradients on the accumulation's last micro-step only
        parallel.set_gradient_sync(state.model, last_micro)
    no_sync = w.world > 1 and not last_micro and hasattr(state.model, "no_sync") and not state.sharded
    with state.model.no_sync() if no_sync else nullcontext():
        with w.precision.autocast():
            if cached_causal is not None:
                targets = causal_cached_targets(cached_causal, w.device)
            elif cached is not None:
                targets = cached_targets(cached, w.device)
            else:
                targets = core.teacher_targets(run.teacher, inputs)
            out = state.model(inputs, targets)
        state.engine.backward(out["loss"])
    meter.add(out)
    meter.step_tokens += int(inputs["mask"].sum())
    meter.window_pairs += int(next(iter(batch.values())).shape[0])
    meter.micro += 1
    return last_micro


def optimizer_step(state: TrainState, run: Run, meter: Meter) -> None:
    """Clip, step and schedule; record the step's row; inject a configured fault; evaluate and report
    when an evaluation is due (every ``eval_every`` steps and at the last)."""
    t, w = run.t, run.worker
    lr = state.engine.step()
    state.step += 1
    core = state.core
    if hasattr(core, "update_domain_weights") and state.step % core.update_every == 0:
        _update_domain_weights(core, run.teacher, run.evaluation, run.tokens, w.rank, w.world)
    meter.tokens_seen += meter.step_tokens
    if meter.startup is not None and "t_step" not in meter.startup:
        meter.startup["t_step"] = time.time()
    if w.rank == 0:
        row = {"step": state.step, "time": time.time(), "train/lr": lr, "train/tokens": meter.step_tokens * w.world,
               **{f"train/{k}": v / t.grad_accum for k, v in meter.step_sums.items()}}
        meter.history.append(row)
        run.gauges.set_step(state.step, row["train/loss"],
                            {k: v / t.grad_accum for k, v in meter.step_sums.items() if k != "loss"})
    meter.window_steps += 1
    meter.step_sums, meter.step_tokens = {}, 0
    if t.fault and w.rank == 0:
        inject_fault(t.fault, state.step, run.config.get("fault_dir"))
    if state.step % t.eval_every == 0 or state.step == t.steps:
        evaluate_and_report(state, run, meter)


def evaluate_and_report(state: TrainState, run: Run, meter: Meter) -> None:
    """The report of an evaluation step: the training averages since the last report, throughput,
    (once) the start-up breakdown, then ``report`` (evaluation, checkpoint, send)."""
    t, w = run.t, run.worker
    elapsed = time.perf_counter() - meter.t_window
    result = {"step": state.step, "world_size": w.world, "train/loss": meter.sums.pop("loss") / meter.n_terms,
              "lr": state.sched.get_last_lr()[0],
              "tokens_per_s": meter.tokens_seen * w.world / max(elapsed, 1e-9), "precision": w.precision.name,
              "samples_per_s": meter.window_pairs * w.world / max(elapsed, 1e-9),
              "teacher_source": "cache" if run.cache is not None else "online"}
    if run.step_flops:
        result["flops_per_s"] = run.step_flops * meter.window_steps / max(elapsed, 1e-9)
    if w.device.type == "cuda":
        result["gpu_memory_bytes"] = float(torch.cuda.memory_allocated(w.device))
    meter.window_pairs = meter.window_steps = 0
    result.update({f"train/{k}": v / meter.n_terms for k, v in meter.sums.items()})
    meter.sums, meter.n_terms, meter.tokens_seen = {}, 0, 0
    final = state.step == t.steps
    if final:
        result.update(_data_coverage(meter.seen_pairs, w.world))
    if meter.startup is not None:
        result.update(startup_breakdown(meter.startup, run.config.get("t_trial_start")))
        meter.startup = None
    result["node_id"] = ray.get_runtime_context().get_node_id()  # RAY: where this trial ran
    result["worker_pid"] = os.getpid()
    result["worker_rss_mib"] = _rss_mib()  # a reused actor's memory, trial after trial (docs/reliability.md)
    if w.rank == 0:
        result[STEP_HISTORY_KEY], meter.history = meter.history, []
    report(state, run, result, final)
    if run.gauges is not None:
        run.gauges.set_report(result, run.config["metric"], run.gpu_peak)
    meter.t_window = None


def report(state: TrainState, run: Run, result: dict, final: bool) -> None:
    """Evaluate (rank 0: validation; at the end also test and efficiency), checkpoint (rank 0) and
    report (every rank) through the worker's ``send``."""
    w, ev = run.worker, run.evaluation
    optim_sd = state.gather()  # FSDP: every rank takes part; rank 0's replica now holds the weights
    core = state.eval_model()
    with tempfile.TemporaryDirectory() as d:
        ckpt_dir = None
        if run.teacher_sharded:  # then no speedup_b*: its latency is sharded (teacher_latency_ms_b*_sharded)
            result["teacher_shards"] = w.world
        if w.rank == 0:
            t0 = time.perf_counter()
            result.update(ev.split(core, run.teacher, "val", BOOTSTRAP if final else 0))
            state.improve(result.get(run.config["metric"]), run.config["mode"])
            result["best_metric"] = state.best
            if final:
                result.update(ev.split(core, run.teacher, "test", BOOTSTRAP))
                result.update(ev.efficiency(core.student, run.teacher, run.t.batch_size, ev.manifest["max_length"]))
            run.eval_s += time.perf_counter() - t0
            result["time/eval_s"] = run.eval_s
            state.save(d, optim_sd)
            # kept with the checkpoint: what a restart from it sends again if this report never reaches Tune
            Path(d, REPORT_FILE).write_text(json.dumps(result, default=_plain))
            ckpt_dir = d
        w.send(result, ckpt_dir)


def report_start(core, run: Run) -> None:
    """The step-0 report (every rank reports; rank 0 evaluates): the student as built, on validation.
    A reference trial also reports it on test (the ``init`` reference) and the teacher scored as its
    own student under ``teacher/val/…`` and ``teacher/test/…`` (the ``teacher`` reference)."""
    w, ev, teacher, reference = run.worker, run.evaluation, run.teacher, run.config.get("reference")
    result = {"step": 0, "world_size": w.world, "node_id": ray.get_runtime_context().get_node_id(),  # RAY
              "worker_pid": os.getpid()}
    if run.teacher_sharded:
        result.update({"teacher_shards": w.world, "startup/teacher_eval_s": run.teacher_eval_s})
    if w.rank == 0:
        t0 = time.perf_counter()
        result.update(ev.split(core, teacher, "val", BOOTSTRAP if reference else 0))
        if reference:
            result.update(ev.split(core, teacher, "test", BOOTSTRAP))
            for split in ("val", "test"):
                result.update(ev.split(teacher, teacher, split, BOOTSTRAP, prefix="teacher/"))
            metric = run.config["metric"]  # where the student starts and the teacher, as flat lines beside the trials
            run.gauges.set_references({"teacher": result.get(f"teacher/{metric}"), "init": result.get(metric)})
        run.eval_s += time.perf_counter() - t0
        result["time/eval_s"] = run.eval_s
    w.send(result, None)


# ------------------------------------------------------------------------------------------ helpers
def _step_flops(cfg: C.Config) -> float | None:
    """FLOPs of one optimizer step (``train.budget.step_flops``, the model ``--dry-run`` prints), or None when
    the models' shapes cannot be computed here."""
    from raykd.train.budget import step_flops

    try:
        return step_flops(cfg)
    except RaykdError:
        return None


def _rss_mib() -> float:
    """Resident memory of this worker process, MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


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


def _plain(value):
    """A numpy scalar or array in a report as plain Python (json.dumps' ``default``)."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def kept_report(checkpoint) -> dict | None:
    """The report a run sent with this checkpoint (``REPORT_FILE`` beside its weights: rank 0's, evaluations
    included), without the per-step rows it carried (already written where it was first received); None for a
    checkpoint kept without one (raykd before it kept them). Every rank reads the same, so all take one branch."""
    with checkpoint.as_directory() as d:
        path = Path(d, REPORT_FILE)
        if not path.exists():
            return None
        report = json.loads(path.read_text())
    report.pop(STEP_HISTORY_KEY, None)
    return report


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


def _update_domain_weights(core, teacher, evaluation: "Evaluation | None", tokens: TokenIds, rank: int,
                           world: int) -> None:
    """DDK's sampling weights from the validation discrepancy: measured on rank 0 (which holds the
    validation pairs), then broadcast so that every rank samples with the same weights."""
    if rank == 0:
        core.update_domain_weights(teacher, evaluation.val, tokens, teacher.config.vocab_size)
    if world > 1:
        import torch.distributed as dist

        dist.broadcast(core.dept_weight, src=0)
        dist.broadcast(core.discrepancy, src=0)



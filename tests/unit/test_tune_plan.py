"""The tune command's plan (dry run), param space and resource sizing, and gradient-accumulation equivalence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from raykd import config as C
from raykd.distill.methods import build_method, make_inputs
from raykd.models.student import build_student
from raykd.ray_layer.trial import trial_resources
from raykd.train.trial_spec import method_kwargs, trial_config
from raykd.errors import RaykdError
from raykd.ray_layer.tune import check_trial_fits, main, max_concurrent, param_space
from tests.helpers.tiny import TOK, tiny_teacher

pytestmark = pytest.mark.unit
SMOKE = Path(__file__).resolve().parents[2] / "search_spaces" / "smoke.yaml"
ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    assert main(["--config", str(SMOKE), "--dry-run", "--storage", str(tmp_path / "s"),
                 "--set", f"data.work_dir={tmp_path / 'w'}"]) == 0
    out = capsys.readouterr().out
    assert "6 trials (optuna, ASHA early stopping) × 120 steps" in out and str(tmp_path / "s" / "smoke") in out
    assert not (tmp_path / "s").exists() and not (tmp_path / "w").exists()


def test_repeated_set_options_all_apply(tmp_path, capsys):
    """``--set a=1 --set b=2`` keeps both (argparse's plain nargs would keep only the last)."""
    assert main(["--config", str(SMOKE), "--dry-run", "--storage", str(tmp_path / "s"),
                 "--set", f"data.work_dir={tmp_path / 'w'}", "--set", "train.steps=77",
                 "--set", "search.num_samples=3", "experiment.name=twice"]) == 0
    out = capsys.readouterr().out
    assert "3 trials (optuna, ASHA early stopping) × 77 steps" in out and str(tmp_path / "s" / "twice") in out


def test_bad_config_exits_2(tmp_path, capsys):
    assert main(["--config", str(SMOKE), "--dry-run", "--set", "method.depth=9"]) == 2
    assert "method.depth" in capsys.readouterr().err


def test_param_space_seeds_and_concurrency():
    cfg = C.load_config(SMOKE)
    space = param_space(cfg)
    assert set(space) == {"depth", "projection_dim", "sampler", "seed"} and space["seed"] == 0
    grid = C.load_config(SMOKE, {"search.algorithm": "grid", "experiment.seeds": [0, 1], "search.max_trials": 60})
    assert param_space(grid)["seed"] == {"grid_search": [0, 1]}
    assert max_concurrent(cfg, 2.0) == 2  # local mode on CPUs (the shipped default): one trial per CPU ...
    assert max_concurrent(cfg, 16.0) == 16  # ... in the CPUs besides Ray Data's reserve (trial_cpus)
    assert max_concurrent(C.load_config(SMOKE, {"train.cpus_per_worker": 1}), 2.0) == 1  # one CPU stays free
    assert max_concurrent(C.load_config(SMOKE, {"train.cpus_per_worker": 1}), 16.0) == 15
    workers = C.load_config(SMOKE, {"train.local_mode": False})
    assert max_concurrent(workers, 16.0) == 14  # a worker group: 1 CPU a worker, plus its 0.05-CPU trial driver


def test_local_mode_puts_the_worker_in_the_tune_actor_and_needs_one_worker(tmp_path, capsys):
    cfg = C.load_config(SMOKE, {"train.local_mode": True, "train.cpus_per_worker": 2})
    assert trial_resources(cfg.train, 2) == {"CPU": 2}  # the actor trains: it holds the worker's CPUs
    assert trial_resources(C.load_config(SMOKE, {"train.local_mode": False}).train, 1) == {"CPU": 0.05}  # fits the trainer
    assert max_concurrent(cfg, 5.0) == 2
    check_trial_fits(cfg, 3.0)
    with pytest.raises(RaykdError, match=r"needs 1 × 2 = 2 CPUs, but this Ray has 2 and keeps 1 for Ray Data"):
        check_trial_fits(cfg, 2.0)  # the trial's Ray Data input would starve (a worker group: never scheduled)
    with pytest.raises(C.ConfigError, match="train.local_mode.*num_workers 1, got 2"):
        C.load_config(SMOKE, {"train.local_mode": True, "train.num_workers": 2})
    assert main(["--config", str(SMOKE), "--dry-run", "--storage", str(tmp_path / "s"),
                 "--set", f"data.work_dir={tmp_path / 'w'}", "train.local_mode=true"]) == 0
    assert "in the Tune actor (Ray Train local mode, actors reused)" in capsys.readouterr().out


def test_trial_config_applies_searched_params_and_ablations():
    base = C.to_dict(C.load_config(SMOKE))
    cfg = trial_config(base, {"depth": 2, "sampler": "entropy", "seed": 3, "method.params.ablate": "fusion"})
    assert (cfg.method.depth, cfg.sampler.name, cfg.experiment.seeds) == (2, "entropy", [3])
    kwargs, aggregation = method_kwargs(cfg, 12)
    assert kwargs["fusion"] is False and kwargs["dynamic_weights"] is True and aggregation
    kwargs, aggregation = method_kwargs(trial_config(base, {"method.params.ablate": "aggregation"}), 12)
    assert aggregation is False


def test_gradient_accumulation_matches_the_full_batch_for_a_per_token_objective():
    torch.manual_seed(0)
    teacher = tiny_teacher().eval()
    student = build_student(teacher, 2)
    method = build_method("structural", student, teacher.config, depth=2, projection_dim=16, relation=False,
                          contrastive=False, fusion=False, weights={"sentence": 0.0})
    method.eval()  # no dropout: the two updates must be comparable exactly
    g = torch.Generator().manual_seed(0)
    batch = {}
    for side in ("q", "a"):  # equal lengths, no padding: every sequence has the same number of counted tokens
        ids = torch.randint(5, 60, (4, 8), generator=g)
        ids[:, 0], ids[:, -1] = TOK.cls, TOK.sep
        batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"] = ids, torch.ones_like(ids)
    batch["department"] = torch.tensor([0, 1, 2, -1])
    full = make_inputs(batch, TOK)
    loss = method(full, method.teacher_targets(teacher, full))["align"]
    g_full = torch.autograd.grad(loss, [p for p in method.parameters() if p.requires_grad], allow_unused=True)
    grads = None
    for half in (slice(0, 2), slice(2, 4)):
        part = make_inputs({k: v[half] for k, v in batch.items()}, TOK)
        loss = method(part, method.teacher_targets(teacher, part))["align"] / 2
        g = torch.autograd.grad(loss, [p for p in method.parameters() if p.requires_grad], allow_unused=True)
        grads = g if grads is None else [a + b if a is not None else None for a, b in zip(grads, g)]
    for a, b in zip(g_full, grads):
        if a is not None:
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.fixture
def no_ray_settings(monkeypatch):
    """None of ``single_machine_ray``'s variables in the environment; the originals come back after the test."""
    from raykd.ray_layer import cluster as tune

    for k in (tune.LOOPBACK_ENV, tune.PREEMPTION_WATCHER_ENV, tune.SOFT_LIMIT_ENV):
        monkeypatch.setenv(k, "")  # records the original state
        monkeypatch.delenv(k)
    return tune


def test_a_single_machine_ray_gets_loopback_no_preemption_watcher_and_kept_idle_workers(no_ray_settings, monkeypatch):
    tune = no_ray_settings
    tune.single_machine_ray()
    assert os.environ[tune.LOOPBACK_ENV] == "0" and os.environ[tune.PREEMPTION_WATCHER_ENV] == "0"
    assert int(os.environ[tune.SOFT_LIMIT_ENV]) == 4 * (os.cpu_count() or 1) + 16
    monkeypatch.setenv(tune.PREEMPTION_WATCHER_ENV, "1")  # what the user exported is kept
    monkeypatch.setenv(tune.SOFT_LIMIT_ENV, "3")
    tune.single_machine_ray()
    assert os.environ[tune.PREEMPTION_WATCHER_ENV] == "1" and os.environ[tune.SOFT_LIMIT_ENV] == "3"


def test_a_ray_for_local_mode_trials_keeps_rays_default_for_idle_workers(no_ray_settings, monkeypatch):
    tune = no_ray_settings
    tune.single_machine_ray(keep_idle_workers=False)
    assert os.environ[tune.PREEMPTION_WATCHER_ENV] == "0" and tune.SOFT_LIMIT_ENV not in os.environ
    monkeypatch.setenv(tune.SOFT_LIMIT_ENV, "0")  # what the user exported is kept either way
    tune.single_machine_ray(keep_idle_workers=True)
    assert os.environ[tune.SOFT_LIMIT_ENV] == "0"


def test_a_fresh_run_sets_an_earlier_one_of_the_same_name_aside(tmp_path):
    from raykd.ray_layer.tune import set_aside_previous

    (tmp_path / "s" / "study" / "references" / "trial_a").mkdir(parents=True)
    (tmp_path / "s" / "study-confirm" / "trial_b").mkdir(parents=True)
    (tmp_path / "s" / "other").mkdir()
    moved = set_aside_previous(str(tmp_path / "s"), "study")
    assert len(moved) == 2 and not (tmp_path / "s" / "study").exists()
    assert not (tmp_path / "s" / "study-confirm").exists() and (tmp_path / "s" / "other").exists()
    assert (Path(moved[0]) / "references" / "trial_a").is_dir() and (Path(moved[1]) / "trial_b").is_dir()
    assert set_aside_previous(str(tmp_path / "s"), "study") == []  # nothing left to move
    assert set_aside_previous("s3://bucket/x", "study") == []


def test_local_mode_is_the_default_for_one_worker_trials_on_a_ray_raykd_starts_itself():
    from raykd.ray_layer.tune import with_local_mode

    auto = C.load_config(SMOKE, {"train.local_mode": None})
    assert auto.train.local_mode is None  # null: decided when the study knows where it runs
    assert with_local_mode(auto, None).train.local_mode is True
    assert with_local_mode(auto, "auto").train.local_mode is False  # a cluster given by --address: worker groups
    two = C.load_config(SMOKE, {"train.local_mode": None, "train.num_workers": 2})
    assert with_local_mode(two, None).train.local_mode is False
    for forced in (True, False):
        assert with_local_mode(C.load_config(SMOKE, {"train.local_mode": forced}), None).train.local_mode is forced
    assert C.TrainConfig().local_mode is None


def test_the_dry_run_states_epochs_and_gpu_hours_computed_from_the_models_shapes():
    from raykd.train.budget import budget, encoder_flops_per_token, step_flops

    paper = C.load_config(ROOT / "search_spaces" / "paper.yaml")
    b = budget(paper, paper.data.train_pairs)
    assert b["pairs_per_trial"] == 30_000 * 64 * 2 * 4 and b["epochs_per_trial"] == pytest.approx(96.0)
    # written out: BERT-large layer = 4·1024² + 2·1024·4096 weights; attention 4·512·1024 per token
    layer = 2 * (4 * 1024**2 + 2 * 1024 * 4096) + 4 * 512 * 1024
    assert encoder_flops_per_token(24, 1024, 4096, 512) == 24 * layer
    tokens = 2 * 512 * 512  # questions and answers of 512 pairs at 512 tokens
    assert step_flops(paper) == tokens * (24 * layer + 3 * 6 * layer)
    runs = 48 + 3 * 3 + 4  # search, confirm top 3 × 3 seeds, references on seeds {0, 1, 2, 3}
    assert b["trials"] == runs
    assert b["gpu_hours"] == pytest.approx(runs * 30_000 * step_flops(paper) / (312e12 * 0.4) / 3600)
    out = main(["--config", str(ROOT / "search_spaces" / "paper.yaml"), "--dry-run"])
    assert out == 0


def test_the_memory_plan_counts_the_published_models_and_says_whether_the_paper_setting_fits():
    """Parameter counts against the models' published sizes (LLaMA-2-7B 6,738,415,616; TinyLlama-1.1B
    1,100,048,384; Qwen2-0.5B 494,032,768), and the causal paper plan's parts added up."""
    from raykd.train.budget import decoder_params, memory_plan, memory_text
    from raykd.config import load_config

    assert decoder_params(32, 4096, 32, 32, 11008, 32000) == 6_738_415_616
    assert decoder_params(22, 2048, 32, 4, 5632, 32000) == 1_100_048_384
    assert abs(decoder_params(24, 896, 14, 2, 4864, 151936, tied=True) - 494_032_768) / 494_032_768 < 0.001  # + biases
    cfg = load_config(ROOT / "search_spaces" / "causal_paper.yaml")
    m = memory_plan(cfg)
    assert m["student_params"] == 1_100_048_384 and m["teacher_params"] == 6_738_415_616 and m["gpus"] == 8
    assert m["weights_grads_optimizer"] == pytest.approx(16 * 1_100_048_384 / 2**30)
    # what trials hold (precision.frozen_on): a causal teacher's bf16 weights on GPUs, a full copy per GPU
    assert m["teacher"] == pytest.approx(2 * 6_738_415_616 / 2**30) and m["teacher_dtype"] == "bf16"
    assert memory_plan(load_config(ROOT / "search_spaces" / "causal_paper.yaml", {"train.precision": "fp16"})
                       )["teacher"] == pytest.approx(4 * 6_738_415_616 / 2**30)  # fp16 policy: fp32 weights
    assert m["total_best"] == pytest.approx(m["weights_grads_optimizer_fsdp"] + m["teacher"]
                                            + m["activations_checkpointed"] + m["logits_chunked"])
    tokens = 8 * 2 * 512
    assert m["tokens_per_micro_batch"] == tokens
    assert m["logits_plain"] == pytest.approx(5 * (tokens // 2) * 32000 * 4 / 2**30)
    assert m["logits_chunked"] == pytest.approx(5 * 2048 * 32000 * 4 / 2**30)
    assert m["total_ddp"] > m["total_best"]
    assert "fits an A100 80 GB" in memory_text(cfg)


def test_teacher_shard_is_validated_and_auto_shards_only_a_teacher_too_large_for_one_gpu():
    """teacher.shard: named values; ``always`` needs fsdp and a causal teacher; ``auto`` shards a causal
    teacher under fsdp over ≥ 2 GPUs when its full copy exceeds budget.TEACHER_GPU_SHARE of one GPU —
    LLaMA-2-70B in bf16 (129 GiB) on A100s 80 GB, not LLaMA-2-7B (12.6 GiB) — and never on CPU."""
    from raykd.train.budget import GIB, TEACHER_GPU_SHARE, decoder_params, memory_plan, memory_text, shard_teacher
    from raykd.config import ConfigError, load_config

    paper = ROOT / "search_spaces" / "causal_paper.yaml"
    with pytest.raises(ConfigError, match="teacher.shard.*'yes' is not one of auto, never, always"):
        load_config(paper, {"teacher.shard": "yes"})
    with pytest.raises(ConfigError, match="teacher.shard.*needs train.strategy fsdp"):
        load_config(paper, {"teacher.shard": "always", "train.strategy": "ddp"})
    with pytest.raises(ConfigError, match="teacher.shard.*causal_lm"):
        load_config(ROOT / "search_spaces" / "smoke.yaml", {"teacher.shard": "always", "train.strategy": "fsdp",
                                                            "train.local_mode": False, "method.name": "kd"})
    with pytest.raises(ConfigError, match="lmbda"):
        load_config(paper, {"train.strategy": "fsdp", "method.name": "gkd", "method.params": {"lmbda": 0.5}})
    with pytest.raises(ConfigError, match=r"space.method.params.lmbda: value 0.5 is invalid: train.strategy: fsdp"):
        load_config(paper, {"train.strategy": "fsdp", "method.name": "gkd", "method.params": {},
                            "space": {"method.params.lmbda": {"choice": [0.0, 0.5]}}})
    a100 = 80 * GIB
    b70 = 2 * decoder_params(80, 8192, 64, 8, 28672, 32000)
    b7 = 2 * decoder_params(32, 4096, 32, 32, 11008, 32000)
    assert b70 > TEACHER_GPU_SHARE * a100 > b7
    assert shard_teacher("auto", "fsdp", "causal_lm", 8, b70, a100)
    assert not shard_teacher("auto", "fsdp", "causal_lm", 8, b7, a100)
    assert not shard_teacher("auto", "ddp", "causal_lm", 8, b70, a100)  # ddp: a full copy per GPU
    assert not shard_teacher("auto", "fsdp", "causal_lm", 1, b70, a100)  # nothing to shard over
    assert not shard_teacher("auto", "fsdp", "causal_lm", 8, b70, None)  # CPU
    assert not shard_teacher("never", "fsdp", "causal_lm", 8, b70, a100)
    assert shard_teacher("always", "fsdp", "causal_lm", 2, 1.0, None)
    big = {"teacher.shape": {"layers": 80, "hidden": 8192, "heads": 64, "kv_heads": 8, "intermediate": 28672,
                             "vocab": 32000}, "train.strategy": "fsdp",
           "method.params": {"dynamic_weights": False}}
    m = memory_plan(load_config(paper, big))
    assert m["teacher_sharded"] and m["teacher_full"] == pytest.approx(b70 / GIB)
    root = decoder_params(0, 8192, 64, 8, 28672, 32000)  # embeddings, head, final norm: gathered in a forward
    per_block = (b70 / 2 - root) / 80
    assert m["teacher"] == pytest.approx(b70 / GIB / 8 + 2 * (root + 2 * per_block) / GIB)
    assert m["total_best"] == pytest.approx(m["weights_grads_optimizer_fsdp"] + m["teacher"]
                                            + m["activations_checkpointed"] + m["logits_chunked"])
    assert "sharded over 8 GPUs under FSDP" in memory_text(load_config(paper, big))
    kept = memory_plan(load_config(paper, {**big, "teacher.shard": "never"}))
    assert not kept["teacher_sharded"] and kept["teacher"] == pytest.approx(b70 / GIB)
    assert not memory_plan(load_config(paper))["teacher_sharded"]  # the paper's 7B teacher: a full copy per GPU


def test_a_local_mode_trial_on_cpus_takes_its_share_of_the_whole_node():
    from raykd.ray_layer.tuners import local_threads

    def cfg(**sets):
        return C.load_config(Path(__file__).resolve().parents[2] / "search_spaces" / "smoke.yaml", sets)

    assert local_threads(cfg(), 2) == 1  # two trials at once (trial_cpus): one core each
    assert local_threads(cfg(), 16) == 1  # 16 trials at once: one core each
    assert local_threads(cfg(**{"search.max_concurrent": 1}), 2) == 2  # one trial at a time: both cores, reserve included
    assert local_threads(cfg(**{"search.max_concurrent": 2}), 16) == 8
    assert local_threads(cfg(**{"train.cpus_per_worker": 1}), 2) == 2  # an explicit share: 1 trial, the node's threads
    assert local_threads(cfg(**{"train.threads_per_worker": 1}), 2) == 0  # an explicit count wins (the rule)
    assert local_threads(cfg(**{"train.local_mode": False}), 2) == 0  # worker groups keep today's placement


def test_local_mode_trials_on_cpus_run_one_per_cpu_in_the_cpus_besides_ray_datas_reserve():
    from raykd.ray_layer.tuners import DATA_RESERVE_CPUS, trial_cpus

    def cfg(**sets):
        return C.load_config(SMOKE, sets)

    assert trial_cpus(cfg().train, 2.0) == 0.5 and trial_cpus(cfg().train, 16.0) == 0.9375
    assert trial_cpus(cfg().train, 3.0) == 0.6666  # rounded down (Ray's resources have 1e-4 precision)
    for cpus in [2, 2.5, 3, 4, 7, 8, 12, 16, 24, 33, 64, 96, 128, 192]:
        share = trial_cpus(cfg().train, float(cpus))
        n = max_concurrent(cfg(), float(cpus))
        assert n == int(cpus), cpus  # one trial per whole CPU ...
        assert n * share <= cpus - DATA_RESERVE_CPUS + 1e-12, cpus  # ... and Ray Data's reserve stays free
        check_trial_fits(cfg(), float(cpus))
    assert trial_cpus(cfg(**{"train.cpus_per_worker": 2}).train, 16.0) == 2  # an explicit share wins
    assert trial_cpus(cfg(**{"train.local_mode": False}).train, 16.0) == 1  # worker groups: today's 1 CPU a worker
    assert trial_cpus(cfg(**{"train.use_gpu": True}).train, 16.0) == 1  # a GPU trial: 1 CPU beside its GPU
    assert trial_cpus(cfg().train, 1.0) == 1  # nothing besides the reserve: refused, as before
    with pytest.raises(RaykdError, match="needs 1 × 1 = 1 CPUs, but this Ray has 1 and keeps 1 for Ray Data"):
        check_trial_fits(cfg(), 1.0)


@pytest.mark.parametrize("key,value,message", [("train.cpus_per_worker", 0, "must be positive, or null"),
                                                ("train.cpus_per_worker", -1.5, "must be positive, or null"),
                                                ("train.threads_per_worker", -1, "must be 0 .the rule. or a positive")])
def test_impossible_cpu_and_thread_counts_fail_at_load_time(key, value, message):
    with pytest.raises(C.ConfigError, match=f"smoke.yaml: {key}: {message}"):
        C.load_config(SMOKE, {key: value})


def test_the_plan_says_what_a_trial_reserves(tmp_path, capsys):
    def plan(*sets):
        assert main(["--config", str(SMOKE), "--dry-run", "--storage", str(tmp_path / "s"),
                     "--set", f"data.work_dir={tmp_path / 'w'}", *sets]) == 0
        return capsys.readouterr().out

    assert "1 worker(s) × a share of the CPUs: one trial per CPU, 1 CPU kept for Ray Data" in plan()
    assert "1 worker(s) × 2 CPU in the Tune actor" in plan("train.cpus_per_worker=2")
    assert "1 worker(s) × 1 CPU, torch threads 1" in plan("train.local_mode=false")


def test_a_phase_of_fewer_trials_than_cpus_gives_each_trial_more_threads():
    from ray import tune

    from raykd.ray_layer.tuners import local_threads, phase_trials

    cfg = C.load_config(SMOKE)
    assert phase_trials(param_space(cfg), 6) == 6  # the search: its samples
    confirm = {"confirm": tune.grid_search([{"depth": 2}]), "seed": tune.grid_search([0, 1, 2])}
    assert phase_trials(confirm, 1) == 3 and phase_trials({"a": {"b": tune.grid_search([1, 2])}, "c": 1}, 2) == 4
    assert max_concurrent(cfg, 2.0, trials=1) == 1 and local_threads(cfg, 2.0, trials=1) == 2  # one trial: both cores
    assert local_threads(cfg, 2.0, trials=3) == 1  # two at once, one core each
    assert max_concurrent(cfg, 16.0, trials=6) == 6 and local_threads(cfg, 16.0, trials=6) == 2  # 6 trials, 16 CPUs
    assert max_concurrent(cfg, 16.0, trials=40) == 16 and local_threads(cfg, 16.0, trials=40) == 1


def test_each_phase_and_its_resume_size_threads_and_resources_alike(monkeypatch):
    """``study_tuner`` and ``restore_tuner`` (a resumed phase) give a phase's trials the same CPUs and torch
    threads — a resumed trial computes with as many threads as an uninterrupted one — with Tune's Tuner, and the
    parameter and resource wrappers, recorded instead of run."""
    from ray import tune

    from raykd.ray_layer import tuners
    from raykd.train.trial_spec import StudyPlan

    seen = {}

    class Recorded:
        def __init__(self, trainable, param_space=None, tune_config=None, run_config=None):
            seen.update(trainable=trainable, concurrent=tune_config.max_concurrent_trials)

        @classmethod
        def restore(cls, path, trainable=None, **kw):
            seen.update(trainable=trainable, concurrent=None)

    monkeypatch.setattr(tune, "Tuner", Recorded)
    monkeypatch.setattr(tune, "with_parameters", lambda fn, plan: plan)
    monkeypatch.setattr(tune, "with_resources", lambda plan, resources: (plan, resources))
    cfg, plan = C.load_config(SMOKE), StudyPlan(base={})
    one = {"seed": tune.grid_search([0])}
    three = {"confirm": tune.grid_search([{"depth": 2}]), "seed": tune.grid_search([0, 1, 2])}
    for cpus, space, trials, threads, concurrent, share in [(2.0, one, 1, 2, 1, 0.5), (2.0, three, 3, 1, 2, 0.5),
                                                            (16.0, three, 3, 5, 3, 0.9375)]:
        tuners.study_tuner(cfg, plan, "/tmp/s", "n", space, cpus)
        assert seen["trainable"] == (dataclasses_replace(plan, threads), {"CPU": share}) and seen["concurrent"] == concurrent
        tuners.restore_tuner(cfg, plan, "/tmp/s/n", cpus, trials)
        assert seen["trainable"] == (dataclasses_replace(plan, threads), {"CPU": share})
    assert plan.threads == 0  # the study's own plan is not changed by a phase
    workers = C.load_config(SMOKE, {"train.local_mode": False})
    tuners.study_tuner(workers, plan, "/tmp/s", "n", three, 2.0)
    assert seen["trainable"] == (plan, {"CPU": 0.05})  # a worker group: its workers hold the CPUs and threads
    gpu = C.load_config(SMOKE, {"train.use_gpu": True})
    tuners.study_tuner(gpu, plan, "/tmp/s", "n", three, 16.0)
    assert seen["trainable"] == (plan, {"CPU": 1.0, "GPU": 1})


def dataclasses_replace(plan, threads):
    import dataclasses

    return dataclasses.replace(plan, threads=threads)


def test_a_ray_of_under_two_cpus_or_a_cluster_raykd_did_not_start_gets_a_cpu_per_worker():
    from raykd.ray_layer.tune import with_worker_cpus
    from raykd.ray_layer.tuners import trial_cpus

    cfg = C.load_config(SMOKE)
    for cpus in (1.0, 1.00005, 1.0001, 1.5, 1.9999):  # nothing left for a trial beside Ray Data's reserve ...
        assert trial_cpus(cfg.train, cpus) == 1 and max_concurrent(cfg, cpus) == 1, cpus
        with pytest.raises(RaykdError, match="keeps 1 for Ray Data"):  # ... so the study is refused, as before
            check_trial_fits(cfg, cpus)
    assert with_worker_cpus(cfg).train.cpus_per_worker == 1.0
    assert trial_cpus(with_worker_cpus(cfg).train, 2.0) == 1.0 and max_concurrent(with_worker_cpus(cfg), 16.0) == 15
    explicit = C.load_config(SMOKE, {"train.cpus_per_worker": 0.5})
    assert with_worker_cpus(explicit) is explicit

"""train.strategy fsdp on CPU (gloo, 2 processes): one optimizer step (SGD with momentum: linear in the
gradient, so the comparison is tight) of a causal KD objective sharded
by FSDP2 over two ranks, each with half the batch and the step's global token count, gives the same
weights as the unsharded objective on the whole batch; the full state dict gathered on rank 0 loads
back into a fresh sharded model and optimizer (checkpoint round trip)."""

from __future__ import annotations

import os
import socket

import pytest
import torch

pytestmark = pytest.mark.distributed
NAME = "kd"  # token-level terms only: half a batch per rank with the global count is the whole batch exactly
KW = {"kd": {"divergence": "jsd"}}  # (batch-coupled terms — in-batch InfoNCE, per-batch means — are not)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, body, port: int, args: tuple) -> None:
    """One spawned rank: joins the gloo group, runs ``body(rank, world, *args)``, meets the other rank at
    a barrier and leaves with ``os._exit`` — no gloo teardown: a rank that destroys its group while the
    other still holds connections aborts that one (SIGABRT, "terminate called without an active
    exception"; ~1 run in 10 even after a barrier). A failure prints its traceback and exits 1."""
    import sys
    import traceback

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        body(rank, 2, *args)
        dist.barrier()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _on_two_ranks(body, *args) -> None:
    """``body(rank, 2, *args)`` on two CPU processes in one gloo group (``_entry``)."""
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(body, _free_port(), args), nprocs=2, join=True)


def _objective():
    from raykd.distill.methods import build_method
    from raykd.models.families import TeacherShape, family
    from raykd.models.student import build_student

    torch.manual_seed(0)
    teacher = family("causal_lm").build(TeacherShape(4, 32, 2, 64, 64, "llama"), 50, 0, 1, 2).eval()
    method = build_method(NAME, build_student(teacher, 2), teacher.config, **KW[NAME])
    return teacher, method


def _inputs(rows):
    from raykd.distill.methods import make_inputs
    from raykd.models.families import family
    from tests.helpers.tiny_causal import TOKENS, VOCAB
    from tests.helpers.tiny_causal import causal_batch as _batch

    batch, _, _ = _batch(rows=4, seed=9)
    batch = {k: v[rows] for k, v in batch.items()}
    return make_inputs(batch, TOKENS, corrupt=True, vocab_size=VOCAB, family=family("causal_lm")), batch


def _rank(rank: int, world: int, out: str) -> None:
    import torch.distributed as dist

    from raykd.train import parallel as parallel

    teacher, method = _objective()
    full_inputs, full_batch = _inputs(slice(0, 4))
    n_global = int(full_batch["response_mask"].sum())
    model = parallel.shard(method, method.student.family.blocks(method.student.mlm))
    assert parallel.is_sharded(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    inputs, _ = _inputs(slice(2 * rank, 2 * rank + 2))
    inputs["num_tokens"] = n_global / world
    model(inputs, method.teacher_targets(teacher, inputs))["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sd, osd = parallel.full_state(model, opt)
    if rank == 0:
        torch.save({"sd": sd, "osd": osd}, out)
    dist.barrier()
    # round trip: a fresh sharded objective loads the gathered state (every rank reads the file)
    _, fresh = _objective()
    fresh = parallel.shard(fresh, fresh.student.family.blocks(fresh.student.mlm))
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9)
    saved = torch.load(out, weights_only=False)
    parallel.load_full_state(fresh, fresh_opt, saved["sd"], saved["osd"])
    again, again_opt = parallel.full_state(fresh, fresh_opt)
    if rank == 0:  # (loading converts the given dict's tensors in place: compare with the file)
        on_disk = torch.load(out, weights_only=False)
        assert all(torch.equal(again[k], on_disk["sd"][k]) for k in on_disk["sd"])
        assert again_opt["state"].keys() == on_disk["osd"]["state"].keys()


def test_an_fsdp_step_on_two_cpu_ranks_equals_the_unsharded_step(tmp_path):
    out = str(tmp_path / "state.pt")
    _on_two_ranks(_rank, out)
    sharded = torch.load(out, weights_only=False)["sd"]
    teacher, method = _objective()
    opt = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9)
    inputs, _ = _inputs(slice(0, 4))
    method(inputs, method.teacher_targets(teacher, inputs))["loss"].backward()
    torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
    opt.step()
    ref = method.state_dict()
    assert sharded.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(sharded[k], ref[k], atol=1e-5), k
    assert any(not torch.equal(ref[k], _objective()[1].state_dict()[k]) for k in ref)  # the step changed weights


# ------------------------------------------------------------------------------- a sharded frozen teacher
def _teacher(vocab: int, pad: int):
    from raykd.models.families import TeacherShape, family

    torch.manual_seed(3)
    return family("causal_lm").build(TeacherShape(3, 32, 2, 64, 64, "llama"), vocab, pad).eval().requires_grad_(False)


def _evaluation(prepared: str):
    from transformers import AutoTokenizer

    from raykd.data.shards import load_manifest
    from raykd.data.template import CausalTemplate
    from raykd.evaluation.causal_lm import CausalEvaluation

    manifest = load_manifest(prepared)
    tok = AutoTokenizer.from_pretrained(f"{prepared}/{manifest['tokenizer']['path']}")
    cls, sep, pad = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    template = CausalTemplate(prefix=(cls,), middle=(sep,), suffix=(sep,), strip=(pad, cls, sep), eos=sep, pad=pad)
    return CausalEvaluation(prepared, manifest, 8, template), int(manifest["tokenizer"]["vocab_size"]), pad


def _teacher_rank(rank: int, world: int, prepared: str, out: str) -> None:
    from raykd.train import parallel as parallel

    ev, vocab, pad = _evaluation(prepared)
    teacher = _teacher(vocab, pad)
    teacher = parallel.shard_frozen(teacher, teacher.model.layers)
    assert parallel.is_sharded(teacher) and not any(p.requires_grad for p in teacher.parameters())
    student = _teacher(vocab, pad)  # any unsharded model: the student's numbers are rank 0's own
    if rank == 0:  # before the collective part, rank 0 alone is refused instead of waiting for ever
        with pytest.raises(RuntimeError, match="every rank together"):
            ev.split(student, teacher, "val")
    # each rank its own batch (different lengths: the collectives are over parameters, not data)
    ids = torch.randint(5, vocab, (2, 6 + 3 * rank), generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits
    ev.teacher_part(teacher, 16)
    if rank == 0:
        res = {"logits0": logits, **ev.split(student, teacher, "test"), **ev.efficiency(student, teacher, 8, 16)}
        torch.save(res, out)


def test_a_sharded_teacher_gives_the_unsharded_outputs_and_evaluation(synth_prepared, tmp_path):
    """teacher.shard: a frozen causal teacher sharded over two gloo ranks (``parallel.shard_frozen``)
    gives the unsharded teacher's logits; its part of the evaluation (scores, greedy generations in
    step on both ranks, efficiency), computed by both ranks together, gives rank 0 the unsharded
    teacher's metrics; rank 0 alone is refused with an error, not left waiting."""
    _, prepared, _ = synth_prepared
    out = str(tmp_path / "sharded.pt")
    _on_two_ranks(_teacher_rank, str(prepared), out)
    got = torch.load(out, weights_only=False)
    ev, vocab, pad = _evaluation(str(prepared))
    teacher, student = _teacher(vocab, pad), _teacher(vocab, pad)
    ids = torch.randint(5, vocab, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(got["logits0"], teacher(input_ids=ids).logits, atol=1e-5)
    ref = {**ev.split(student, teacher, "test"), **ev.efficiency(student, teacher, 8, 16)}
    for key in ("test/teacher_perplexity", "test/teacher_answer_accuracy", "test/teacher_rouge_l",
                "test/retained_accuracy", "test/param_reduction", "test/teacher_params"):
        assert got[key] == pytest.approx(ref[key], rel=1e-5), key
    assert got["test/param_reduction"] == 0.0 and got["test/teacher_params"] == sum(p.numel() for p in teacher.parameters())
    # no speedup against a sharded teacher (its latency is mostly the all-gathers): its latency under its own name
    assert "test/speedup_b1" not in got and "test/decode_speedup" not in got and ref["test/speedup_b1"] > 0
    assert got["test/teacher_latency_ms_b1_sharded"] > 0 and got["test/teacher_decode_tokens_per_s_sharded"] > 0


def _from_rank0(rank: int, world: int, spec: str, out: str) -> None:
    from raykd.train import parallel as parallel
    from raykd.models.families import family_of
    from raykd.models.teacher import load_teacher, teacher_skeleton

    skeleton = teacher_skeleton(spec).eval()
    assert all(p.is_meta for p in skeleton.parameters())  # nothing read but config.json
    full = load_teacher(spec).eval() if rank == 0 else None
    teacher = parallel.shard_frozen_from_rank0(skeleton, full, family_of(skeleton).blocks(skeleton),
                                               torch.device("cpu"))
    ids = torch.randint(5, 50, (2, 7 + rank), generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits
    torch.save({"ids": ids, "logits": logits, "buffers": {k: b.clone() for k, b in teacher.named_buffers()}},
               f"{out}.{rank}")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_teacher_read_by_rank_0_alone_reaches_every_shard(arch, tmp_path):
    """parallel.shard_frozen_from_rank0: ranks shard a meta-device skeleton built from config.json,
    rank 0 alone loads the weights and broadcasts them; every rank's forward then equals the unsharded
    teacher's, rotary frequencies (non-persistent buffers, absent from state dicts) included."""
    from raykd.models.families import TeacherShape, family
    from raykd.models.teacher import load_teacher

    torch.manual_seed(1)
    family("causal_lm").build(TeacherShape(3, 32, 2, 64, 64, arch), 50, 0, 1, 2).save_pretrained(tmp_path / "t")
    out = str(tmp_path / "rank")
    _on_two_ranks(_from_rank0, str(tmp_path / "t"), out)
    ref = load_teacher(str(tmp_path / "t")).eval()
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=False)
        with torch.no_grad():
            assert torch.allclose(got["logits"], ref(input_ids=got["ids"]).logits, atol=1e-6), rank
        ref_buffers = dict(ref.named_buffers())
        assert got["buffers"].keys() == ref_buffers.keys()
        assert all(torch.equal(b, ref_buffers[k]) for k, b in got["buffers"].items())

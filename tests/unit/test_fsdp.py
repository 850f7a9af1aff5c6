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

pytestmark = pytest.mark.unit
NAME = "kd"  # token-level terms only: half a batch per rank with the global count is the whole batch exactly
KW = {"kd": {"divergence": "jsd"}}  # (batch-coupled terms — in-batch InfoNCE, per-batch means — are not)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    from tests.unit.test_causal import TOKENS, VOCAB, _batch

    batch, _, _ = _batch(rows=4, seed=9)
    batch = {k: v[rows] for k, v in batch.items()}
    return make_inputs(batch, TOKENS, corrupt=True, vocab_size=VOCAB, family=family("causal_lm")), batch


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from raykd import parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
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
        # both ranks done before either tears gloo down: a rank that destroys its group and exits while the
        # other still holds its connections aborts that one ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_an_fsdp_step_on_two_cpu_ranks_equals_the_unsharded_step(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "state.pt")
    mp.spawn(_rank, args=(2, _free_port(), out), nprocs=2, join=True)
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

"""Every registered model family implements the whole ``ModelFamily`` interface, checked on a tiny
model of its own: build, save → load, a student cut from the teacher (layer map, narrower width),
backbone, attention inputs, task corruption and loss (against F.cross_entropy written here), and the
exported directory loading with the family's Auto classes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raykd.models.families import INTERFACE, ModelFamily, TeacherShape, family, family_names, family_of
from raykd.models.student import build_student

pytestmark = pytest.mark.unit
SHAPE = TeacherShape(layers=4, hidden=32, heads=2, intermediate=64, max_position=32)
VOCAB, PAD, MASK, SPECIAL = 60, 0, 4, (0, 1, 2, 3, 4)


CASES = [("masked_lm", None), ("causal_lm", "llama"), ("causal_lm", "qwen2"), ("causal_lm", "gpt2")]


def test_every_registered_family_is_covered():
    assert sorted({n for n, _ in CASES}) == sorted(family_names())


def _expected_labels(name, ids, chosen):
    """The task's target ids at the chosen positions, written out: the token itself (masked LM) or
    the next one (causal LM)."""
    out = []
    for b, p in chosen.nonzero().tolist():
        out.append(int(ids[b, p]) if name == "masked_lm" else int(ids[b, p + 1]))
    return torch.tensor(out, dtype=torch.long)


@pytest.mark.parametrize("name,arch", CASES)
def test_every_family_implements_the_whole_interface_on_a_tiny_model(name, arch, tmp_path):
    import dataclasses

    fam = family(name)
    SHAPE = dataclasses.replace(globals()["SHAPE"], arch=arch)
    assert isinstance(fam, ModelFamily) and fam.name == name and fam.export_classes
    for method in INTERFACE:  # overridden, not the base's NotImplementedError
        assert getattr(type(fam), method) is not getattr(ModelFamily, method), f"{name} lacks {method}"
    torch.manual_seed(0)
    teacher = fam.build(SHAPE, VOCAB, PAD).eval()
    assert fam.matches(teacher) and family_of(teacher) is fam
    fam.save(teacher, tmp_path / "t")
    loaded = fam.load(str(tmp_path / "t")).eval()
    skeleton = fam.skeleton(str(tmp_path / "t"))  # config.json alone, on the meta device
    assert all(p.is_meta for p in skeleton.parameters()) and type(skeleton) is type(loaded)
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == {k: v.shape for k, v in loaded.state_dict().items()}
    ids = torch.randint(5, VOCAB, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids, attention_mask=mask).logits,
                              teacher(input_ids=ids, attention_mask=mask).logits, atol=1e-6)
        h = fam.backbone(teacher)(input_ids=ids, attention_mask=mask).last_hidden_state
    assert h.shape == (3, 9, SHAPE.hidden)

    assert len(fam.blocks(teacher)) == SHAPE.layers and all(isinstance(b, torch.nn.Module) for b in fam.blocks(teacher))
    narrow = fam.student_like(teacher, 2, hidden=16)
    assert narrow.config.num_hidden_layers == 2 and narrow.config.hidden_size == 16 and type(narrow) is type(teacher)
    student = build_student(teacher, 2)  # same width: mapped layers copied (layer i ← teacher layer 2i)
    t_sd, s_sd = teacher.state_dict(), student.mlm.state_dict()
    copied = [k for k in s_sd if fam.layer_key.search(k) and fam.layer_key.search(k).group(1) == "0"]
    assert copied
    for k in copied:
        m = fam.layer_key.search(k)
        assert torch.equal(s_sd[k], t_sd[f"{k[:m.start(1)]}1{k[m.end(1):]}"])

    q, k, v = fam.attention_inputs(teacher, h, 2)
    assert q.shape == k.shape == v.shape == (3, 9, SHAPE.hidden)

    g = torch.Generator().manual_seed(0)
    corrupted, chosen = fam.corrupt(ids, mask, SPECIAL, MASK, VOCAB, 0.3, g)
    assert corrupted.shape == ids.shape and chosen.dtype == torch.bool and chosen.any()
    assert not chosen[mask == 0].any()
    logits = teacher(input_ids=corrupted, attention_mask=mask).logits
    loss = fam.task_loss(logits, ids, chosen)
    labels = _expected_labels(name, ids, chosen)
    assert torch.equal(fam.labels_at(ids, chosen), labels)
    expect = -torch.log_softmax(logits[chosen], -1).gather(1, labels[:, None]).mean()
    assert math.isfinite(float(loss)) and float(loss) == pytest.approx(float(expect), rel=1e-5)
    total = fam.task_loss(logits, ids, chosen, reduction="sum")
    assert float(total) == pytest.approx(float(F.cross_entropy(logits[chosen], labels, reduction="sum")), rel=1e-5)

    import transformers

    fam.save(student.mlm, tmp_path / "s")
    for cls in fam.export_classes:
        getattr(transformers, cls).from_pretrained(tmp_path / "s")


def test_an_unregistered_model_is_refused_by_name():
    with pytest.raises(ValueError, match="no registered model family matches"):
        family_of(torch.nn.Linear(2, 2))
    from raykd.errors import RaykdError

    with pytest.raises(RaykdError, match="unknown model family 'seq2seq'"):
        family("seq2seq")

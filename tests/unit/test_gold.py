"""``gold``, without Ray: the text-offset alignment of two tokenizations (hand-made offsets and real
tokenizers trained here, on text with CJK, spaces and multi-byte characters), ``gold_distance`` against
a NumPy implementation written here (span merge, renormalised JSD on the shared entries, sorted L1 on the
rest), the collate's span tensors, the teacher view's spans, and one ``gold`` training step with a
teacher of another vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raykd.data.collate import CausalCollate
from raykd.data.token_spans import NO_SPAN, align_spans, byte_ends, shared_vocabulary, token_spans
from raykd.data.tokenizer import encode_ids, train_bpe, train_wordpiece
from raykd.distill import losses as L
from raykd.distill.methods import build_method, make_inputs
from raykd.models.families import TeacherShape, family
from raykd.models.student import build_student
from tests.helpers.tiny_causal import BOS, EOS, PAD, TEMPLATE, TOKENS, VOCAB

pytestmark = pytest.mark.unit

TEXTS = ["头痛三天了，怎么办？ take ibuprofen 200mg twice", "发烧 fever 38.5℃ 😀 ok", "  spaces  here 中文",
         "血压 140/90 mmHg，需要复查。Bye!"]


# ------------------------------------------------------------------------------------------ alignment
def test_byte_ends_count_utf8_bytes_and_mark_tokens_ending_inside_a_character():
    text = "a中😀"  # bytes: a=1, 中=3, 😀=4
    # a | 中 split in two tokens with the same offsets | 😀
    ends = byte_ends(text, [(0, 0), (0, 1), (1, 2), (1, 2), (2, 3)], [True, False, False, False, False])
    assert ends == [NO_SPAN, 2 * 1, 2 * 4 - 1, 2 * 4, 2 * 8]
    # a token straddling two characters (bytes of 中 and of 😀) ends inside 😀
    assert byte_ends(text, [(0, 2), (1, 3), (2, 3)], [False] * 3) == [2 * 4 - 1, 2 * 8 - 1, 2 * 8]


def test_align_spans_close_only_where_both_sides_reach_one_character_boundary():
    # student: "ab" "c" | teacher "a" "bc": one 2:2 span; then "d" vs "d": 1:1; then a tail on the teacher
    s, t = align_spans([4, 6, 8], [2, 6, 8, 10])
    assert s == [0, 0, 1] and t == [0, 0, 1, NO_SPAN]
    # both sides inside one character (odd ends) do not close a span; specials are skipped
    s, t = align_spans([NO_SPAN, 5, 6], [5, 6, NO_SPAN])
    assert s == [NO_SPAN, 0, 0] and t == [0, 0, NO_SPAN]
    assert align_spans([], [2]) == ([], [NO_SPAN])


def _covered(text, offsets, spans, g):
    chars = [o for o, s in zip(offsets, spans) if s == g]
    return text[min(a for a, _ in chars):max(b for _, b in chars)]


@pytest.mark.parametrize("student", ["bpe", "wordpiece"])
def test_spans_of_real_tokenizers_cover_the_same_text_on_both_sides(student):
    corpus = TEXTS * 40
    tok_t = train_bpe(corpus, 600)
    tok_s = train_bpe(corpus, 300) if student == "bpe" else train_wordpiece(corpus, 300)
    ids_s, ids_t = encode_ids(tok_s, TEXTS, 64), encode_ids(tok_t, TEXTS, 64)
    spans_s, spans_t = token_spans(tok_s, tok_t, TEXTS, ids_s, ids_t, 64)
    multi = 0
    for text, iss, its, ss, st in zip(TEXTS, ids_s, ids_t, spans_s, spans_t):
        off_s = tok_s.backend_tokenizer.encode(text).offsets
        off_t = tok_t.backend_tokenizer.encode(text).offsets
        assert len(ss) == len(iss) and len(st) == len(its)
        found = sorted({g for g in ss if g >= 0})
        assert found == sorted({g for g in st if g >= 0}) == list(range(len(found)))  # numbered alike, in order
        assert [g for g in ss if g >= 0] == sorted(g for g in ss if g >= 0)  # monotone along the text
        for g in found:  # the same characters on both sides (WordPiece drops spaces: compare without them)
            assert _covered(text, off_s, ss, g).strip() == _covered(text, off_t, st, g).strip()
            multi += sum(x == g for x in ss) != sum(x == g for x in st)
        assert all(g >= 0 for g, i in zip(ss, iss) if i not in tok_s.all_special_ids)  # whole text covered
    assert multi > 0  # N:M spans occur (else the test would not test merging)


def test_a_truncation_inside_a_character_closes_no_span_there():
    text = "中文字中文字"
    corpus = [text, "中文", "文字", "字中"] * 20
    tok_t = train_bpe(corpus, 262)  # alphabet 256 + specials + a few merges: characters cut into bytes
    tok_s = train_wordpiece(corpus, 60)  # whole characters
    full = tok_t.backend_tokenizer.encode(text).offsets
    cut_inside = 0
    for n in range(1, len(full)):  # every truncation point of the teacher's tokens
        ids_s, ids_t = encode_ids(tok_s, [text], n), encode_ids(tok_t, [text], n)
        s, t = token_spans(tok_s, tok_t, [text], ids_s, ids_t, n)
        if full[n][0] < full[n - 1][1]:  # the cut falls inside a character: its last token closes no span
            cut_inside += 1
            assert t[0][-1] == NO_SPAN, (n, t)
    assert cut_inside > 0


def test_token_spans_refuse_ids_the_tokenizer_does_not_give():
    tok = train_bpe(TEXTS * 10, 300)
    ids = encode_ids(tok, TEXTS[:1], 64)
    with pytest.raises(ValueError, match="row 0"):
        token_spans(tok, tok, TEXTS[:1], [ids[0][:-1]], ids, 64)


def test_shared_vocabulary_pairs_entries_by_string():
    a, b = train_bpe(TEXTS * 10, 300), train_bpe(TEXTS * 10, 400)
    s, t = shared_vocabulary(a, b, len(a), len(b))
    va, vb = a.get_vocab(), b.get_vocab()
    inv_a, inv_b = {i: k for k, i in va.items()}, {i: k for k, i in vb.items()}
    assert len(s) == len(t) == len(set(va) & set(vb)) > 250
    assert all(inv_a[i] == inv_b[j] for i, j in zip(s, t))
    s2, _ = shared_vocabulary(a, b, 10, len(b))
    assert max(s2) < 10


# ------------------------------------------------------------------------------------------ the distance
def np_gold(s, t, tok_s, tok_t, span_s, span_t, temperature=1.0, shared=None, beta=0.5, w=None, num_tokens=None):
    """GOLD's distance written out: per span present on both sides, p(span) = Π earlier p(token) ·
    p_last(·) on each side; the shared entries renormalised and compared by JSD_β (M = β·t + (1−β)·s),
    the other entries sorted descending, zero-padded and compared by Σ|·|; w·JSD + (1−w)·L1 summed over
    spans ÷ num_tokens (mean over spans without it). At β = 0 / 1 the JSD is TRL's forward / reverse KL."""
    def logsm(z):
        z = z / temperature
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    def merged(z, toks, spans, g):
        pos = [i for i in range(len(spans)) if spans[i] == g]
        lp = logsm(z[pos].astype(np.float64))
        return np.exp(lp[-1] + sum(lp[k, toks[pos[k]]] for k in range(len(pos) - 1)))

    def l1(a, b):
        a, b = -np.sort(-a), -np.sort(-b)
        n = max(len(a), len(b))
        return np.abs(np.pad(a, (0, n - len(a))) - np.pad(b, (0, n - len(b)))).sum()

    def kl(a, b):
        return float(np.sum(np.where(a > 0, a * np.log(a / b), 0.0)))

    total, count = 0.0, 0
    for g in sorted(set(span_s[span_s >= 0].tolist()) & set(span_t[span_t >= 0].tolist())):
        ps, pt = merged(s, tok_s, span_s, g), merged(t, tok_t, span_t, g)
        if shared is None:
            d = l1(ps, pt)
        else:
            i_s, i_t = shared
            ww = len(i_t) / len(pt) if w is None else w
            a, b = ps[i_s] / ps[i_s].sum(), pt[i_t] / pt[i_t].sum()
            m = beta * b + (1 - beta) * a
            jsd = beta * kl(b, m) + (1 - beta) * kl(a, m)
            if beta in (0.0, 1.0):  # TRL's endpoints: forward KL(t‖s) at 0, reverse KL(s‖t) at 1
                jsd = kl(b, a) if beta == 0.0 else kl(a, b)
            d = ww * jsd + (1 - ww) * l1(np.delete(ps, i_s), np.delete(pt, i_t))
        total, count = total + d, count + 1
    return total / (num_tokens if num_tokens is not None else count)


def _case(seed, n_s=9, n_t=7, v_s=11, v_t=13):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(n_s, v_s, generator=g) * 2, torch.randn(n_t, v_t, generator=g) * 2
    tok_s, tok_t = torch.randint(0, v_s, (n_s,), generator=g), torch.randint(0, v_t, (n_t,), generator=g)
    span_s = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, -1])[:n_s]  # N:M spans, a span only one side has (4)
    span_t = torch.tensor([0, 1, 2, 3, 3, -1, 5])[:n_t]
    return s.double(), t.double(), tok_s, tok_t, span_s, span_t


@pytest.mark.parametrize("seed", [0, 1])
def test_gold_distance_equals_the_written_out_formula(seed):
    s, t, tok_s, tok_t, span_s, span_t = _case(seed)
    shared = (torch.tensor([0, 2, 3, 7]), torch.tensor([5, 2, 12, 0]))
    cases = [dict(), dict(temperature=2.0), dict(shared=shared), dict(shared=shared, beta=0.2, num_tokens=9.0),
             dict(shared=shared, matched_weight=0.7), dict(shared=shared, beta=0.0), dict(shared=shared, beta=1.0)]
    for kw in cases:
        got = float(L.gold_distance(s, t, tok_s, tok_t, span_s, span_t, **kw))
        sh = None if "shared" not in kw else (kw["shared"][0].numpy(), kw["shared"][1].numpy())
        want = np_gold(s.numpy(), t.numpy(), tok_s.numpy(), tok_t.numpy(), span_s.numpy(), span_t.numpy(),
                       kw.get("temperature", 1.0), sh, kw.get("beta", 0.5), kw.get("matched_weight"),
                       kw.get("num_tokens"))
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), kw


def test_gold_distance_hand_values():
    z = torch.randn(5, 6, dtype=torch.float64)
    toks, spans = torch.tensor([1, 2, 3, 4, 5]), torch.arange(5)
    ids = torch.arange(6)
    # the same model on both sides: 0, with and without the shared part
    assert float(L.gold_distance(z, z, toks, toks, spans, spans)) == pytest.approx(0.0, abs=1e-12)
    assert float(L.gold_distance(z, z, toks, toks, spans, spans, shared=(ids, ids))) == pytest.approx(0.0, abs=1e-12)
    # one tokenizer, 1:1 spans, all entries shared: exactly GKD's JSD_β at T = 1
    y = torch.randn(5, 6, dtype=torch.float64)
    got = float(L.gold_distance(z, y, toks, toks, spans, spans, shared=(ids, ids), beta=0.3))
    assert got == pytest.approx(float(L.generalized_jsd(z, y, beta=0.3)), rel=1e-10)
    # without the shared part, 1:1 spans: ULD's distance
    assert float(L.gold_distance(z, y, toks, toks, spans, spans)) == pytest.approx(float(L.uld_distance(z, y)), rel=1e-10)
    # no span on both sides: nothing to compare; no span at all on one side, with a bound given
    assert float(L.gold_distance(z, y, toks, toks, spans, spans + 10)) == 0.0
    none = torch.full_like(spans, -1)
    assert float(L.gold_distance(z, y, toks, toks, spans, none, num_spans=20, num_tokens=5.0)) == 0.0


def test_gold_distance_gradients_reach_the_student_only():
    s, t, tok_s, tok_t, span_s, span_t = _case(3)
    s.requires_grad_(True)
    t.requires_grad_(True)
    L.gold_distance(s, t, tok_s, tok_t, span_s, span_t, shared=(torch.tensor([1, 2]), torch.tensor([3, 4]))).backward()
    assert float(s.grad.abs().sum()) > 0 and t.grad is None
    assert float(s.grad[8].abs().sum()) == 0.0  # a position in no span gets no gradient


# ------------------------------------------------------------------------------------------ data and a step
T_VOCAB = 90
T_TEMPLATE = TEMPLATE.__class__(prefix=(3, 9), middle=(10,), suffix=(4,), strip=(3, 4, 5), eos=4, pad=5)


def test_the_collate_places_each_answer_tokens_span_on_its_response_position():
    rows = {"q_input_ids": [[20, 21], [22]], "a_input_ids": [[30, 31], [31, 32, 33]],
            "teacher_q_input_ids": [[40, 41, 42], [43]], "teacher_a_input_ids": [[50], [52, 53]],
            "a_span": [[0, 0], [0, 1, -1]], "teacher_a_span": [[0], [0, 1]], "department": np.array(["x", "x"])}
    out = CausalCollate(TEMPLATE, {"x": 0}, T_TEMPLATE)(rows)
    s, t = out["span"], out["teacher"]["span"]
    r0 = out["response_mask"][0].bool()
    assert s[0][r0].tolist() == [0, 0, 1] and (s[0][~r0] == -1).all()  # answer 0 0, the suffix: span 1
    assert t[0][out["teacher"]["response_mask"][0].bool()].tolist() == [0, 1]
    # row 1: the student's last answer token is in no span, so the suffix is in none either
    assert s[1][out["response_mask"][1].bool()].tolist() == [0, 1, -1, -1]
    assert t[1][out["teacher"]["response_mask"][1].bool()].tolist() == [0, 1, -1]


def test_the_suffix_span_is_numbered_past_spans_of_stripped_tokens():
    # the student's answer ends in a special token (a WordPiece [UNK]: stripped from its sequence) that
    # forms span 1 alone; the teacher's last tokens are span 1 too: the suffix must not join it
    rows = {"q_input_ids": [[20]], "a_input_ids": [[30, PAD]], "teacher_q_input_ids": [[40]],
            "teacher_a_input_ids": [[50, 51]], "a_span": [[0, 1]], "teacher_a_span": [[0, 1]],
            "department": np.array(["x"])}
    out = CausalCollate(TEMPLATE, {"x": 0}, T_TEMPLATE)(rows)
    s = out["span"][0][out["response_mask"][0].bool()].tolist()
    t = out["teacher"]["span"][0][out["teacher"]["response_mask"][0].bool()].tolist()
    assert s == [0, 2] and t == [0, 1, 2]


def test_a_gold_step_with_a_teacher_of_another_vocabulary():
    torch.manual_seed(0)
    fam = family("causal_lm")
    teacher = fam.build(TeacherShape(2, 32, 2, 64, 64, "llama"), T_VOCAB, 5, 3, 4).eval()
    base = fam.build(TeacherShape(4, 32, 2, 64, 64, "llama"), VOCAB, PAD, BOS, EOS)
    method = build_method("gold", build_student(base, 2), teacher.config, seed=0, gold_weight=0.6, temperature=1.5)
    method.vocab, method.teacher_vocab = VOCAB, T_VOCAB
    method.shared = ([7, 8, 9, 20], [60, 61, 62, 70])
    rows = {"q_input_ids": [[20, 21], [22, 23]], "a_input_ids": [[30, 31, 32], [31, 33]],
            "teacher_q_input_ids": [[60, 61], [62]], "teacher_a_input_ids": [[80, 81], [82, 83, 84]],
            "a_span": [[0, 0, 1], [0, 1]], "teacher_a_span": [[0, 1], [0, 0, 1]], "department": np.array(["x", "x"])}
    batch = CausalCollate(TEMPLATE, {"x": 0}, T_TEMPLATE)(rows)
    inputs = make_inputs(batch, TOKENS, corrupt=True, vocab_size=VOCAB, family=fam)
    inputs["num_tokens"] = float(inputs["chosen"].sum())
    out = method(inputs, method.teacher_targets(teacher, inputs))
    with torch.no_grad():  # the same distance computed row by row from the two models' logits
        s_logits = method.student(input_ids=inputs["input_ids"], attention_mask=inputs["mask"]).logits[..., :VOCAB]
        t_in = inputs["teacher_inputs"]
        t_logits = teacher(input_ids=t_in["input_ids"], attention_mask=t_in["mask"]).logits
    total = 0.0
    for r in range(2):
        cs, ct = inputs["chosen"][r], t_in["chosen"][r]
        total += np_gold(s_logits[r][cs].double().numpy(), t_logits[r][ct].double().numpy(),
                         torch.roll(inputs["input_ids"][r], -1)[cs].numpy(), torch.roll(t_in["input_ids"][r], -1)[ct].numpy(),
                         torch.roll(batch["span"][r], -1)[cs].numpy(), torch.roll(batch["teacher"]["span"][r], -1)[ct].numpy(),
                         1.5, (np.array(method.shared[0]), np.array(method.shared[1])), num_tokens=1.0)
    assert float(out["gold"]) == pytest.approx(total / inputs["num_tokens"], rel=1e-4)
    assert float(out["loss"]) == pytest.approx(float(out["ce"]) + 0.6 * float(out["gold"]), rel=1e-5)
    out["loss"].backward()
    assert float(method.student.mlm.get_input_embeddings().weight.grad.abs().sum()) > 0


def test_span_chunks_never_cut_a_span():
    from raykd.distill.chunked import span_chunks

    spans = torch.tensor([0, 0, 0, 1, 2, 2, 5, 5, 5, 5, 9])
    got = span_chunks(spans, 2)
    assert [(c.start, c.stop) for c in got] == [(0, 3), (3, 6), (6, 10), (10, 11)]
    assert span_chunks(spans, 100) == [slice(0, 11)] and span_chunks(spans[:0], 4) == [slice(0, 0)]


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_gold_equals_the_plain_distance_in_value_and_gradients(chunk):
    from raykd.distill.chunked import chunked_gold

    g = torch.Generator().manual_seed(chunk)
    n_s, n_t, d, v_s, v_t = 9, 7, 6, 11, 13
    h_s, h_t = torch.randn(n_s, d, generator=g, dtype=torch.float64), torch.randn(n_t, d, generator=g, dtype=torch.float64)
    w_s, w_t = torch.randn(v_s + 2, d, generator=g, dtype=torch.float64), torch.randn(v_t, d, generator=g, dtype=torch.float64)
    b_s = torch.randn(v_s + 2, generator=g, dtype=torch.float64)
    tok_s, tok_t = torch.randint(0, v_s, (n_s,), generator=g), torch.randint(0, v_t, (n_t,), generator=g)
    span_s = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, -1])
    span_t = torch.tensor([0, 1, 2, 3, 3, -1, 5])
    shared = (torch.tensor([0, 2, 3, 7]), torch.tensor([5, 2, 12, 0]))
    kw = dict(temperature=1.5, shared=shared, beta=0.3, num_tokens=9.0)
    runs = []
    for chunked in (False, True):
        hs, ws, bs = (x.clone().requires_grad_(True) for x in (h_s, w_s, b_s))
        if chunked:
            value = chunked_gold(hs, ws, h_t, w_t, tok_s, tok_t, span_s, span_t, chunk_tokens=chunk, b_s=bs,
                                 vocab_s=v_s, **kw)
        else:
            value = L.gold_distance((hs @ ws.T + bs)[:, :v_s], h_t @ w_t.T, tok_s, tok_t, span_s, span_t, **kw)
        value.backward()
        runs.append((float(value), hs.grad, ws.grad, bs.grad))
    (a, *ga), (b, *gb) = runs
    assert b == pytest.approx(a, rel=1e-6)  # the chunks run in fp32 (as every chunked loss), the plain form in fp64
    for x, y in zip(ga, gb):
        assert float((x - y).norm()) <= 1e-5 * float(x.norm()) + 1e-9


def test_the_teacher_view_records_spans_and_the_shared_vocabulary(tmp_path):
    import pyarrow.parquet as pq

    from raykd.data.shards import PrepareSettings, prepare
    from raykd.data.synth import write_corpus
    from raykd.data.teacher_view import paired_paths, prepare_view, shared_vocabulary as view_shared
    from raykd.data.tokenizer import load_tokenizer

    write_corpus(tmp_path / "raw", 60, seed=3)
    m = prepare(PrepareSettings(raw=[str(tmp_path / "raw")], out=str(tmp_path / "p"), tokenizer="train:300",
                                max_length=24, quiet=True, shard_rows=150))
    view, vm = prepare_view(tmp_path / "p", m, "train-bpe:500", quiet=True)
    rows = pq.read_table(paired_paths(view, vm)).to_pydict()
    mine = pq.read_table(f"{tmp_path}/p/train").to_pydict()
    tok_s, tok_t = load_tokenizer(f"{tmp_path}/p/tokenizer"), load_tokenizer(f"{view}/tokenizer")
    want = token_spans(tok_s, tok_t, mine["answer"], mine["a_input_ids"], rows["teacher_a_input_ids"], 24)
    assert rows["a_span"] == want[0] and rows["teacher_a_span"] == want[1]
    assert sum(max(s, default=-1) + 1 for s in rows["a_span"]) > len(rows["a_span"])  # spans were found
    s, t = view_shared(view)
    assert (s, t) == shared_vocabulary(tok_s, tok_t, m["tokenizer"]["vocab_size"], vm["tokenizer"]["vocab_size"])

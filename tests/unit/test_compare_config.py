"""A compare study's pure parts: the ``compare:`` section fails at load time naming the key, contenders
get labels, each method's search space comes from its declaration, best values on a range edge are
flagged, and the declared family is exactly |against pairs| × |metrics| tests, Holm over those only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from raykd.config import contenders as KC

from raykd.results import comparison as K
from raykd import config as C
from raykd.distill import settings as S

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
GOOD = ("experiment: {seeds: [0, 1]}\nspace: {lr: {loguniform: [1.0e-4, 1.0e-3]}}\n"
        "compare: {methods: [structural, tinybert, {kd: {divergence: reverse_kl}}], tune: {trials: 3}, "
        "against: method=structural, metrics: [test/mrr@10]}\n")


def load(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text, encoding="utf-8")
    return C.load_config(f)


def test_a_good_compare_section_loads_and_counts_every_trial(tmp_path):
    cfg = load(tmp_path, GOOD)
    assert [k.label for k in C.compare_contenders(cfg)] == ["structural", "tinybert", "kd"]
    assert C.compare_tuning_seed(cfg) == 2
    assert C.planned_trials(cfg) == 4 * 3 + 4 * 2  # (3 contenders + the reference) × (3 tuning + 2 seeds)


@pytest.mark.parametrize("change,needle", [
    (("tune: {trials: 3}", "tune: {}"), "compare.tune.trials: required"),
    (("tune: {trials: 3}", "tune: {trials: 3, scheduler: hyperband}"), "'hyperband' is not one of asha, none"),
    (("tune: {trials: 3}", "tune: {trials: 3, seed: 1}"), "compare.tune.seed: 1 is one of experiment.seeds"),
    (("against: method=structural", "against: method=ours"), "compare.against: 'method=ours': expected method=LABEL"),
    (("against: method=structural, ", ""), "compare.against: required"),
    (("metrics: [test/mrr@10]", "metrics: [val/mrr@10]"), "compare.metrics: 'val/mrr@10' is not one of test/"),
    (("metrics: [test/mrr@10]", "metrics: []"), "compare.metrics: required"),
    (("tinybert", "no_distill"), "compare.methods[1].name: 'no_distill' is a reference"),
    (("tinybert", "tinybret"), "compare.methods[1].name: unknown method 'tinybret'"),
    (("{kd: {divergence: reverse_kl}}", "{kd: {divergence: kl}}"), "compare.methods[2].kd.divergence: 'kl' is not"),
    (("{kd: {divergence: reverse_kl}}", "{kd: {betta: 0.1}}"), "compare.methods[2].kd.betta: method 'kd' takes no"),
    (("tinybert, {kd", "structural, {kd"), "compare.methods: structural named more than once"),
    (("seeds: [0, 1]", "seeds: [0]"), "experiment.seeds: a compare study tests paired by seed"),
    (("space: {lr: {loguniform: [1.0e-4, 1.0e-3]}}", "space: {}"), "space: a compare study tunes the shared"),
    (("space: {lr: {loguniform: [1.0e-4, 1.0e-3]}}", "space: {lr: {loguniform: [1.0e-4, 1.0e-3]}, "
      "method.params.temperature: {choice: [1.0, 2.0]}}"), "space.method.params.temperature: in a compare study"),
    (("space: {lr:", "search: {algorithm: grid}\nspace: {lr:"), "search.algorithm: a compare study tunes every"),
])
def test_a_bad_compare_section_fails_at_load_naming_the_key(tmp_path, change, needle):
    old, new = change
    assert old in GOOD
    with pytest.raises(C.ConfigError) as e:
        load(tmp_path, GOOD.replace(old, new, 1))
    assert needle in str(e.value) and "c.yaml" in str(e.value)


@pytest.mark.parametrize("params,needle", [
    ("{kd: {temperature: .nan}}", "expected a finite number, got nan"),
    ("{kd: {kd_weight: .inf}}", "expected a finite number, got inf"),
    ("{minilm: {relation_heads: 2.5}}", "expected an integer, got 2.5"),
    ("{kd: {weights: {kd: high}}}", "expected a mapping of loss term → finite number"),
    ("{structural: {ablate: everything}}", "'everything' is not one of null, none, projection"),
])
def test_impossible_method_settings_fail_at_load(tmp_path, params, needle):
    with pytest.raises(C.ConfigError) as e:
        load(tmp_path, GOOD.replace("{kd: {divergence: reverse_kl}}", params))
    assert needle in str(e.value) and "compare.methods[2]" in str(e.value)


def test_constant_or_repeated_declared_metrics_are_refused(tmp_path):
    with pytest.raises(C.ConfigError, match="compare.metrics: 'test/mrr@10' is declared twice"):
        load(tmp_path, GOOD.replace("metrics: [test/mrr@10]", "metrics: [test/mrr@10, test/mrr@10]"))
    causal = GOOD.replace("experiment:", "teacher: {arch: llama}\nexperiment:").replace("tinybert", "minillm")
    with pytest.raises(C.ConfigError, match="'test/answer_chance' is the same for every method"):
        load(tmp_path, causal.replace("metrics: [test/mrr@10]", "metrics: [test/answer_chance]"))


def test_a_causal_compare_refuses_encoder_methods_and_a_masked_one_refuses_generation(tmp_path):
    causal = GOOD.replace("experiment:", "teacher: {arch: llama}\nexperiment:").replace(
        "metrics: [test/mrr@10]", "metrics: [test/retained_accuracy_above_chance]")
    with pytest.raises(C.ConfigError, match=r"compare.methods\[1\].name: method 'tinybert' does not run on a causal_lm"):
        load(tmp_path, causal)
    ok = causal.replace("tinybert", "{gkd: {lmbda: 0.5}}")
    assert [k.label for k in C.compare_contenders(load(tmp_path, ok))] == ["structural", "gkd", "kd"]
    with pytest.raises(C.ConfigError, match=r"compare.methods\[1\].gkd.lmbda: 0.5 needs a model family that offers"):
        load(tmp_path, GOOD.replace("tinybert", "{gkd: {lmbda: 0.5}}"))


def test_labels_of_a_method_named_twice_come_from_its_fixed_settings():
    ks = KC.parse_contenders(["kd", {"kd": {"divergence": "reverse_kl"}}, {"gkd": {"lmbda": 0.5}}, "gkd"])
    assert [k.label for k in ks] == ["kd", "kd[divergence=reverse_kl]", "gkd[lmbda=0.5]", "gkd"]
    with pytest.raises(ValueError, match="entry 1"):
        KC.parse_contenders(["kd", {"kd": 1, "gkd": 2}])


def test_each_methods_search_space_comes_from_its_declaration_less_what_the_yaml_fixes():
    shared = {"lr": {"loguniform": [1e-4, 1e-3]}}
    kd = KC.contender_space(KC.Contender("kd", "kd", {"divergence": "jsd", "temperature": 2.0}), shared)
    assert kd == {"lr": shared["lr"], "method.params.dynamic_weights": S.BOOL, "method.params.kd_weight": S.KD_WEIGHT}
    # single-term methods tune nothing of their own but the shared settings (no dynamic weights to tune)
    assert KC.contender_space(KC.Contender("distillseq", "distillseq"), shared) == shared
    assert KC.constants(KC.Contender("kd[x]", "kd", {"divergence": "jsd"})) == {
        "method.name": "kd", "contender": "kd[x]", "method.params.divergence": "jsd"}
    # every tuned domain of every built-in method is a valid setting value at both ends
    for name in C.METHOD_NAMES:
        for key, dom in S.tunable(name).items():
            kind, values = next(iter(dom.items()))
            for v in (values if kind == "choice" else values[:2]):
                assert S.check_value(name, key, v) is None, (name, key, v)


def test_best_values_on_the_edge_of_their_range_are_flagged():
    space = {"train.lr": {"loguniform": [1e-4, 1e-2]}, "a": {"uniform": [0.0, 1.0]}, "t": {"choice": [1.0, 2.0, 4.0]},
             "d": {"choice": [False, True]}}
    assert KC.edge_flags(space, {"train.lr": 1.1e-4, "a": 0.5, "t": 2.0, "d": True}) == ["train.lr"]
    assert KC.edge_flags(space, {"train.lr": 1e-3, "a": 0.99, "t": 4.0, "d": False}) == ["a", "t"]
    assert KC.edge_flags(space, {"train.lr": 1e-3, "a": 0.5, "t": 2.0}) == []


def test_the_declared_family_is_exactly_against_pairs_times_metrics_with_holm_over_it_alone():
    from scipy import stats

    confirm = {"ours": {"m1": [0.5, 0.6, 0.7], "m2": [1.0, 2.0, 3.0]},
               "b": {"m1": [0.4, 0.45, 0.65], "m2": [0.5, 2.5, 2.0]},
               "c": {"m1": [0.1, 0.3, 0.2], "m2": [0.9, 1.8, 3.1]}}
    tests = K.declared_tests(confirm, "ours", ["m1", "m2"])
    assert [(t["a"], t["b"], t["metric"]) for t in tests] == [("ours", "b", "m1"), ("ours", "c", "m1"),
                                                              ("ours", "b", "m2"), ("ours", "c", "m2")]
    p = [stats.ttest_rel(confirm["ours"][t["metric"]], confirm[t["b"]][t["metric"]]).pvalue for t in tests]
    for t, pv in zip(tests, p):
        assert t["p"] == pytest.approx(pv, rel=1e-9)
    order = sorted(range(4), key=lambda i: p[i])  # Holm over exactly these four, written out
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * p[i]))
        assert tests[i]["p_holm"] == pytest.approx(running, rel=1e-9)
    explore = K.exploratory_tests(confirm, "ours", ["m1"], ["m1", "m2"], ["ours", "b", "c"])
    got = {(t["a"], t["b"], t["metric"]) for t in explore}
    assert got == {("b", "c", "m1"), ("ours", "b", "m2"), ("ours", "c", "m2"), ("b", "c", "m2")}
    # a test without a p still counts in the family: Holm over 3 declared tests, never over the 2 with a p
    third = {**confirm, "d": {"m1": [0.3, 0.4, 0.5], "m2": [0.0, 1.0, 2.0]}}  # ours − d constant: no variance
    three = K.declared_tests(third, "ours", ["m1"])
    assert [t["b"] for t in three] == ["b", "c", "d"] and "no variance" in three[2]["note"]
    pb, pc = three[0]["p"], three[1]["p"]
    lo = min(pb, pc)
    assert min(three[0]["p_holm"], three[1]["p_holm"]) == pytest.approx(min(1.0, 3 * lo), rel=1e-9)
    assert math.isnan(three[2]["p_holm"])
    # a missing seed drops that pair from the test; one pair left: no p, never a made-up number
    short = K.declared_tests({"ours": {"m": [1.0, None, 2.0]}, "b": {"m": [0.5, 0.7, None]}}, "ours", ["m"])
    assert short[0]["n"] == 1 and math.isnan(short[0]["p"]) and math.isnan(short[0]["p_holm"])


def test_the_shipped_compare_studies_load():
    for name in ("baselines_compare.yaml", "causal_compare.yaml"):
        cfg = C.load_config(ROOT / "search_spaces" / name)
        assert cfg.compare is not None and C.planned_trials(cfg) <= cfg.search.max_trials

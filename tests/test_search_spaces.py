"""Every search-space file loads and validates; bad YAML fails at load time naming file, key and allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from raykd.config import ConfigError, load_config, parse_set, planned_trials

pytestmark = pytest.mark.unit
SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))


def test_the_design_files_exist():
    assert {p.stem for p in SPACES} >= {"smoke", "depth", "projection", "sampling", "baselines", "ablation", "paper"}


@pytest.fixture
def families_as_they_were():
    """A study that loads a plugin family (``plugins:``) leaves the family registry — and the modules imported —
    as it found them (a plugin imported again registers itself again)."""
    import sys

    from raykd.models import families
    from raykd.models.families import spec

    before, built, modules = dict(spec._SPECS), dict(families._IMPLEMENTATIONS), set(sys.modules)
    yield
    spec._SPECS.clear()
    spec._SPECS.update(before)
    families._IMPLEMENTATIONS.clear()
    families._IMPLEMENTATIONS.update(built)
    for name in set(sys.modules) - modules:
        if name.startswith("examples."):
            del sys.modules[name]


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_every_search_space_loads(path, families_as_they_were):
    cfg = load_config(path)
    assert planned_trials(cfg) <= cfg.search.max_trials


def test_paper_setting_is_the_papers():
    c = load_config(SPACES[[p.stem for p in SPACES].index("paper")])
    # 24 → 6 layers at length 512 from a pretrained Chinese encoder (#23). The paper's width is 768; the
    # public 24-layer Chinese encoder is 1024 wide (hfl/chinese-roberta-wwm-ext-large), recorded here.
    assert (c.teacher.shape.layers, c.student.layers, c.data.max_length) == (24, 6, 512)
    assert c.teacher.spec == "hfl/chinese-roberta-wwm-ext-large" and c.teacher.revision
    assert (c.teacher.shape.hidden, c.teacher.shape.heads, c.teacher.shape.intermediate) == (1024, 16, 4096)
    assert c.data.train_pairs == 160_000
    assert (c.train.batch_size, c.train.lr, c.train.precision, c.train.grad_accum, c.train.num_workers) == \
        (64, 2e-4, "fp16", 2, 4)


def write(tmp_path, text):
    p = tmp_path / "x.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,needle", [
    ("train: {stepz: 3}", "unknown key 'train.stepz'; did you mean 'steps'?"),
    ("train: {steps: many}", "train.steps: expected an integer"),
    ("space: {depth: {choice: []}}", "space.depth: choice needs a non-empty list"),
    ("student: {layers: 3}\nspace: {depth: {choice: [1, 4]}}", "value 4 is invalid"),
    ("method: {depth: 7}\nstudent: {layers: 6}", "method.depth: 7 must be between 1 and the student's 6 layers"),
    ("method: {projection_dim: 0}", "method.projection_dim: must be a positive integer"),
    ("method: {name: tinybrt}", "unknown method 'tinybrt'; allowed: structural"),
    ("sampler: {name: random}", "unknown sampler 'random'; allowed: uniform"),
    ("search: {algorithm: grid, max_trials: 3}\nexperiment: {seeds: [0, 1]}\nspace: {depth: {grid: [1, 2, 3]}}",
     "plans 6 trials"),
    ("space: {lr: {loguniform: [0, 1]}}", "loguniform bounds must be positive"),
    ("space: {nonsense: {choice: [1]}}", "'nonsense' is not a setting"),
    ("teacher: {trust_remote_code: true}", "pinned teacher.revision"),
    ("experiment: !!python/object/apply:os.system ['true']", "Python tags are refused"),
])
def test_bad_config_fails_at_load_with_file_and_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert needle in str(e.value) and str(tmp_path / "x.yaml") in str(e.value)


def test_set_overrides_win_and_are_yaml_typed(tmp_path):
    p = write(tmp_path, "train: {lr: 1.0e-3}\nsearch: {num_samples: 2}")
    c = load_config(p, parse_set(["train.lr=1e-4", "search.num_samples=4", "depth=2"]))
    assert (c.train.lr, c.search.num_samples, c.method.depth) == (1e-4, 4, 2)
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["train.lr"])


def test_causal_paper_setting_is_the_companion_papers_and_validates_offline():
    c = load_config(SPACES[[p.stem for p in SPACES].index("causal_paper")])
    assert c.teacher.family == "causal_lm" and c.teacher.spec == "meta-llama/Llama-2-7b-hf" and c.teacher.revision
    assert (c.teacher.shape.layers, c.teacher.shape.hidden, c.teacher.shape.vocab) == (32, 4096, 32000)
    assert c.student.spec == "TinyLlama/TinyLlama_v1.1" and (c.student.layers, c.student.hidden) == (22, 2048)
    assert c.student.vocab == c.teacher.shape.vocab  # one tokenizer
    assert c.method.name == "feature_align" and c.train.precision == "bf16"
    assert c.experiment.metric == "val/answer_accuracy"  # the causal family's lead metric
    from raykd.models.mapping import layer_map

    assert [g for _, g in layer_map(32, 22)][-1] == 32  # 32 → 22 needs the rounded uniform map


def test_causal_smoke_and_losses_cover_the_objectives():
    smoke = load_config(SPACES[[p.stem for p in SPACES].index("causal_smoke")])
    assert smoke.teacher.family == "causal_lm" and smoke.teacher.arch == "llama" and smoke.student.layers * 3 == \
        smoke.teacher.shape.layers and smoke.data.tokenizer.startswith("train-bpe:")
    assert planned_trials(smoke) >= 6 and {"method.params.divergence", "method.params.temperature",
                                           "method.params.kd_weight", "student.layers"} <= set(smoke.space)
    losses = load_config(SPACES[[p.stem for p in SPACES].index("causal_losses")])
    assert set(losses.space["method"]["grid"]) == {"sft", "kd", "gkd", "minillm", "feature_align", "structural"}
    assert losses.experiment.seeds == [0, 1, 2]


@pytest.mark.parametrize("text,needle", [
    ("teacher: {spec: some-org/some-llm}", "teacher.family: set it"),
    ("teacher: {family: seq2seq}", "'seq2seq' is not one of masked_lm, causal_lm"),
    ("teacher: {family: causal_lm, arch: bert}", "'bert' is a masked_lm architecture"),
    ("teacher: {arch: llama}\nmethod: {name: tinybert}", "does not run on a causal_lm teacher"),
    ("teacher: {arch: llama}\nmethod: {name: kd, params: {divergence: kl}}", "'kl' is not one of forward_kl"),
    ("teacher: {arch: llama}\nmethod: {name: kd, params: {skew_alpha: 1.0}}", "must be in [0, 1)"),
    ("method: {name: gkd, params: {lmbda: 0.5}}", "offers 'generates': a masked_lm teacher does not (use a causal_lm"),
    ("teacher: {arch: llama, cache: topk}", "teacher.cache: 'topk' is not one of none, hidden, logits, both"),
    ("teacher: {cache: logits}", "the top-k logit cache serves causal_lm teachers"),
    ("teacher: {arch: llama, cache_topk: 0}", "teacher.cache_topk"),
    ("teacher: {arch: llama}\nsampler: {name: entropy}", "a causal_lm study samples uniform"),
    ("teacher: {arch: llama}\nmethod: {name: feature_align, params: {temperature: 0}}", "must be a positive number"),
])
def test_bad_causal_config_fails_at_load_naming_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert needle in str(e.value) and "x.yaml" in str(e.value)


def test_a_spec_teacher_without_a_recorded_shape_takes_any_student_depth(tmp_path):
    """teacher.shape describes a teacher built from config; a local spec's depth is its own (the
    default shape, 6 layers, must not cap a 12-layer student of a 24-layer spec)."""
    import json

    spec = tmp_path / "t"
    spec.mkdir()
    (spec / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "num_hidden_layers": 24}))
    cfg = load_config(write(tmp_path, f"teacher: {{spec: {spec}, adapt: null}}\nstudent: {{layers: 12}}"))
    assert cfg.student.layers == 12 and cfg.teacher.family == "masked_lm"
    with pytest.raises(ConfigError, match="more than the teacher's 6 layers"):
        load_config(write(tmp_path, "student: {layers: 12}"))

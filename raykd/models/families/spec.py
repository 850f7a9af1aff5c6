"""What raykd knows about each model family without importing torch: one ``FamilySpec`` per family, read by
config validation, the study plan, the compute budget, the views and the Ray layer. The torch side of a
family — building, loading and cutting models, corruption, task loss, export — is its ``ModelFamily``
implementation (``implementation``: imported the first time ``families.family(name)`` is asked for it).

Nothing outside ``raykd/models/families/`` compares a family name: it asks the family's spec (e.g.
``family_spec(cfg.teacher.family).template``). A plugin family registers its own spec and implementation
(``register_family``) and is then accepted everywhere a built-in one is. Pure Python: no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import RaykdError


@dataclass
class ModelShape:
    """The sizes of a transformer raykd builds from a config: blocks, width, attention heads, feed-forward width
    (the YAML's ``teacher.shape``, ``config.ShapeConfig``, and the build's ``TeacherShape`` both extend it)."""

    layers: int = 6
    hidden: int = 64
    heads: int = 4
    intermediate: int = 256


@dataclass
class TeacherShape(ModelShape):
    """Size of a teacher built from a config (randomly initialised, for tests and the generated corpus)."""

    max_position: int = 512
    arch: str | None = None  # the family's architecture to build (causal_lm: llama | qwen2 | gpt2); None: its first


@dataclass(frozen=True)
class FamilySpec:
    """One model family's declaration (every field is what the family offers or needs; no field names a method:
    each method declares the capabilities it needs, ``raykd.distill.settings``)."""

    name: str
    implementation: str  # "module:Class" of its ``base.ModelFamily`` subclass
    archs: tuple[str, ...]  # architectures raykd builds from a config (teacher.arch); the first is the default
    hf_suffixes: tuple[str, ...]  # endings of the HF ``architectures`` class names of this family
    capabilities: frozenset = field(default_factory=frozenset)  # distill.settings.CAPABILITIES
    metric_keys: tuple[str, ...] = ()  # the metrics (without split) its trials report
    view_metrics: tuple[str, ...] = ()  # the test metrics a study's summary prints beside the lead metric
    reference_view_metrics: tuple[str, ...] = ()  # … and, with references, after those
    default_metric: str = ""  # the lead metric when experiment.metric is not set (with its split)
    reference_method: str = "no_distill"  # what the no-distillation reference trains with
    samplers: tuple[str, ...] | None = None  # the built-in samplers it supports (None: every one)
    teacher_caches: tuple[str, ...] = ("none",)  # the teacher.cache values it supports
    topk_cache: bool = False  # its teacher cache holds top-k logits (else hidden states)
    template: bool = False  # sequences are prompt + response through a chat template (else one text per row)
    bf16: bool = False  # precision auto computes in bf16 on CUDA, and a frozen teacher is held in bf16 there
    shardable_teacher: bool = False  # teacher.shard may shard it over an FSDP worker group
    chunked_loss: bool = False  # its logit terms may run chunked over the vocabulary
    task_token_share: float = 0.15  # share of a micro-batch's tokens its task loss is taken at (budget)
    decoder_params: bool = False  # its parameter count follows the decoder formula (budget; else the encoder's)
    max_position_factor: int = 1  # a sequence is up to this many times data.max_length tokens long
    hf_trunks: tuple[str, ...] = ()  # whole HF class names of its trunks without a head (BertModel …)
    table_columns: tuple = ()  # the report's columns: (metric without split, title, decimals)
    reference_columns: tuple = ()  # … added in the reference table
    figure_metrics: tuple[str, ...] = ()  # the metrics the report draws against each varied parameter
    evaluation: str = ""  # "module:Class" of its part of the evaluation protocol (``raykd.evaluation.protocol``)

    def has(self, capability: str) -> bool:
        """Whether the family offers ``capability``."""
        return capability in self.capabilities

    def matches_architectures(self, archs: list[str]) -> bool:
        """Whether an HF config's ``architectures`` name a model of this family."""
        return any(a.endswith(self.hf_suffixes) or a in self.hf_trunks for a in archs)


_SPECS: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a family's declaration (a plugin's too); returns it. A name already taken, or an implementation or
    evaluation that is not ``"module:Class"``, is refused."""
    for what in ("implementation", "evaluation"):
        value = getattr(spec, what)
        if value.count(":") != 1 or not all(value.split(":")):
            raise RaykdError(f"model family {spec.name!r}: {what} {value!r} is not \"module:Class\"")
    if spec.name in _SPECS and _SPECS[spec.name] != spec:
        raise RaykdError(f"model family {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


def family_spec(name: str) -> FamilySpec:
    """The declaration of family ``name``; RaykdError naming the registered ones otherwise."""
    try:
        return _SPECS[name]
    except KeyError:
        raise RaykdError(f"unknown model family {name!r} (registered: {', '.join(_SPECS)})") from None


def family_names() -> tuple[str, ...]:
    """The registered families, in registration order (the first is the default)."""
    return tuple(_SPECS)


def arch_family(arch: str) -> str | None:
    """The family that builds architecture ``arch`` from a config, or None."""
    return next((s.name for s in _SPECS.values() if arch in s.archs), None)


def all_archs() -> tuple[str, ...]:
    """Every architecture some family builds from a config."""
    return tuple(a for s in _SPECS.values() for a in s.archs)


def family_of_architectures(archs: list[str]) -> str | None:
    """The family whose HF class names ``archs`` (an HF config's ``architectures``) names, or None. A family
    with a generating head wins over one without (a list naming both is a causal LM with an extra head)."""
    found = [s for s in _SPECS.values() if s.matches_architectures(archs)]
    found.sort(key=lambda s: not s.has("generates"))
    return found[0].name if found else None


MASKED_LM = register_family(FamilySpec(
    name="masked_lm", implementation="raykd.models.families.masked_lm:MaskedLM", archs=("bert",),
    evaluation="raykd.evaluation.masked_lm:MaskedLMEvaluation",
    hf_suffixes=("ForMaskedLM", "ForPreTraining"), hf_trunks=("BertModel", "RobertaModel"),
    # a token-prediction head, BERT-style masked inputs, bidirectional attention q/k/v of equal widths
    capabilities=frozenset({"token_head", "masked_inputs", "attention_qkv"}),
    # similarity to the teacher and QA retrieval
    metric_keys=("semantic_alignment", "representation_compactness", "structural_consistency", "mrr@10", "recall@1",
                 "retained_mrr"),
    view_metrics=("test/mrr@10", "test/semantic_alignment"), reference_view_metrics=("test/mlm_loss",),
    default_metric="val/mrr@10", reference_method="no_distill", teacher_caches=("none", "hidden"),
    task_token_share=0.15,
    table_columns=(("semantic_alignment", "Semantic Alignment", 2), ("representation_compactness",  # the paper's Table 2
                    "Representation Compactness", 2), ("structural_consistency", "Structural Consistency", 2),
                   ("mrr@10", "MRR@10", 3), ("retained_mrr", "Retained MRR", 3), ("speedup_b1", "Speedup (b=1)", 2)),
    reference_columns=(("mlm_loss", "MLM loss (test)", 3),),
    figure_metrics=("semantic_alignment", "representation_compactness", "structural_consistency", "mrr@10")))

CAUSAL_LM = register_family(FamilySpec(
    name="causal_lm", implementation="raykd.models.families.causal_lm:CausalLM", archs=("llama", "qwen2", "gpt2"),
    evaluation="raykd.evaluation.causal_lm:CausalEvaluation",
    hf_suffixes=("ForCausalLM", "LMHeadModel"),
    # a token-prediction head, generation (a decoder's attention is causal, narrower under GQA) and the teacher's
    # own tokenization of each example beside the student's
    capabilities=frozenset({"token_head", "generates", "teacher_tokens"}),
    # the claim form: answer selection, its chance and the retained shares, perplexity, speed
    metric_keys=("perplexity", "answer_accuracy", "answer_chance", "retained_accuracy",
                 "retained_accuracy_above_chance", "param_reduction", "speedup_b1", "speedup_b32",
                 "decode_tokens_per_s", "rouge_l"),
    view_metrics=("test/answer_accuracy", "test/retained_accuracy_above_chance", "test/retained_accuracy",
                  "test/perplexity"),
    default_metric="val/answer_accuracy", reference_method="sft", samplers=("uniform",),
    teacher_caches=("none", "hidden", "logits", "both"), topk_cache=True, template=True, bf16=True,
    shardable_teacher=True, chunked_loss=True, task_token_share=0.5, decoder_params=True, max_position_factor=3,
    table_columns=(("retained_accuracy_above_chance", "Retained above chance", 3),  # the companion paper's claim form
                   ("answer_accuracy", "Answer accuracy", 3), ("answer_chance", "Chance", 3),
                   ("retained_accuracy", "Retained accuracy (÷ teacher)", 3), ("perplexity", "Perplexity", 2),
                   ("rouge_l", "ROUGE-L", 3), ("param_reduction", "Param. reduction", 3),
                   ("speedup_b1", "Speedup (b=1)", 2), ("speedup_b32", "Speedup (b=32)", 2)),
    figure_metrics=("answer_accuracy", "perplexity", "rouge_l")))

DEFAULT = MASKED_LM.name

"""Each method's settings, declared once (a dataclass per method, as TRL's ``GKDConfig``): name, type,
default, allowed range, whether it is tuned and over which search domain — and the capabilities the
method needs from a model family. Config validation, ``--set``, the search-space keys
``method.params.*`` and compare studies all read these declarations. Pure Python: no torch, no Ray.

A setting is a dataclass field made with ``setting(default, low=…, high=…, choices=…, tune=…)``;
``tune`` is a search domain in the YAML's form (``{"loguniform": [0.1, 10]}``, ``{"choice": [1, 2]}``)
and marks the setting as one a compare study tunes. A plugin method declares its own class with
``@declare("name")`` (or the method class's ``settings`` attribute); one that declares nothing takes
its constructor's keywords, untuned.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

# what a model family can offer a method (raykd.models.families.spec: each family declares what it offers)
# teacher_tokens: its data can carry the teacher's own tokenization of each example (cross-tokenizer objectives)
CAPABILITIES = ("token_head", "masked_inputs", "attention_qkv", "generates", "teacher_tokens")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "tvd")
RELATION_SCOPES = ("within", "all")
BOOL = {"choice": [False, True]}
KD_WEIGHT = {"loguniform": [0.1, 10.0]}  # the weight of a distillation term beside cross-entropy
TEMPERATURE = {"choice": [1.0, 2.0, 4.0]}
# settings the trial passes to every method (study-wide keys and trial facts), never in method.params
STUDY_SETTINGS = ("depth", "projection_dim", "n_departments", "seed")
TRIAL_SETTINGS = ("ablate",)  # declared settings the trial resolves itself (raykd.train.trial_spec), not the constructor


def setting(default: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False, choices: tuple | None = None, tune: dict | None = None,
            needs: str | None = None, kind: type | None = None, doc: str = ""):
    """A declared method setting (a dataclass field). ``low``/``high`` bound a number (``*_open``:
    the bound itself is excluded); ``choices`` lists the allowed values; ``tune`` is the search
    domain a compare study uses; ``needs`` is a family capability the setting requires when truthy;
    ``kind`` the value's type where the default (None) does not say it."""
    meta = {"low": low, "high": high, "low_open": low_open, "high_open": high_open, "choices": choices,
            "tune": tune, "needs": needs, "kind": kind, "doc": doc}
    return field(default=default, metadata=meta)


@dataclass
class MethodSettings:
    """Settings every method takes. ``needs``: the family capabilities the method uses;
    ``multi_term``: whether its loss has several terms (then ``dynamic_weights`` is tuned by a compare
    study: gradient-aware weights are an option of every multi-term method, not one method's)."""

    needs: ClassVar[frozenset] = frozenset()
    multi_term: ClassVar[bool] = True
    reference: ClassVar[bool] = False  # a reference point (trained without a teacher), not a distillation method
    # compares teacher and student token by token over one vocabulary (logits, a top-k cache, states at the same
    # positions): refused when the study's two tokenizers differ (raykd.config.tokenizers)
    same_tokenizer: ClassVar[bool] = True

    weights: dict | None = setting(None, kind=dict, doc="a fixed weight per loss term (1 for terms not listed)")
    dynamic_weights: bool = setting(False, doc="gradient-aware (GradNorm-style) loss weights instead of fixed ones")


SETTINGS: dict[str, type[MethodSettings]] = {}


def declare(name: str):
    """Class decorator: ``cls`` declares the settings of method ``name``."""
    def add(cls):
        if name in SETTINGS:
            raise ValueError(f"method settings {name!r} declared twice")
        SETTINGS[name] = cls
        cls.method_name = name
        return cls
    return add


# ------------------------------------------------------------------------------------------------ built-in
@declare("structural")
@dataclass
class StructuralSettings(MethodSettings):
    """Ours (layer-wise structural mapping)."""

    projection: bool = setting(True, doc="align in a learned shared space (false: the teacher's space)")
    relation: bool = setting(True, doc="match token×token and example×example similarity structure")
    contrastive: bool = setting(True, doc="InfoNCE between student and teacher representations")
    fusion: bool = setting(True, doc="domain-aware fusion of teacher states during the first anneal_until")
    temperature: float = setting(0.1, low=0.0, low_open=True, tune={"loguniform": [0.03, 0.5]},
                                 doc="InfoNCE temperature")
    anneal_until: float = setting(0.3, low=0.0, high=1.0, tune={"uniform": [0.0, 0.6]},
                                  doc="fraction of training after which the fusion gate is zero")
    relation_scope: str = setting("within", choices=RELATION_SCOPES,
                                  doc="example×example relations within questions and within answers only "
                                      "(never question × answer: the lead metric's structure), or all")
    dynamic_weights: bool = setting(True, tune=BOOL, doc="gradient-aware loss weights (the method's default)")
    ablate: str | None = setting(None, choices=(None, "none", "projection", "relation", "contrastive", "fusion",
                                                "aggregation", "dynamic_weights"),
                                 doc="switch one module off (ablation grids)")


@declare("no_distill")
@dataclass
class NoDistillSettings(MethodSettings):
    """The reference: the student on its own task loss."""

    needs: ClassVar[frozenset] = frozenset({"token_head"})
    multi_term: ClassVar[bool] = False
    reference: ClassVar[bool] = True
    same_tokenizer: ClassVar[bool] = False  # reads no teacher


@declare("sft")
@dataclass
class SFTSettings(NoDistillSettings):
    """The causal reference: supervised fine-tuning on the responses."""


@declare("kd")
@dataclass
class KDSettings(MethodSettings):
    """Logit KD: cross-entropy + kd_weight · divergence."""

    needs: ClassVar[frozenset] = frozenset({"token_head"})

    divergence: str = setting("forward_kl", choices=DIVERGENCES, doc="the divergence between the distributions")
    temperature: float = setting(1.0, low=0.0, low_open=True, tune=TEMPERATURE, doc="softmax temperature (× T²)")
    kd_weight: float = setting(1.0, low=0.0, tune=KD_WEIGHT, doc="weight of the divergence beside cross-entropy")
    beta: float = setting(0.5, low=0.0, high=1.0, doc="JSD β (0 = forward KL, 1 = reverse KL)")
    skew_alpha: float = setting(0.1, low=0.0, high=1.0, high_open=True, doc="skew KL α")


@declare("uld")
@dataclass
class ULDSettings(MethodSettings):
    """ULD (Boizard et al. 2024): CE + uld_weight · sorted-probability Wasserstein distance, any two tokenizers."""

    needs: ClassVar[frozenset] = frozenset({"token_head", "teacher_tokens"})
    same_tokenizer: ClassVar[bool] = False

    temperature: float = setting(1.0, low=0.0, low_open=True, tune=TEMPERATURE,
                                 doc="softmax temperature of both distributions (no T² factor: ULD's distance is a "
                                     "probability mass in [0, 2])")
    uld_weight: float = setting(1.0, low=0.0, tune=KD_WEIGHT, doc="weight of the ULD distance beside cross-entropy")


@declare("gold")
@dataclass
class GOLDSettings(MethodSettings):
    """GOLD (TRL's GOLDTrainer, cross-tokenizer part): CE + gold_weight · a distance over the spans where both
    tokenizations of the response line up — shared vocabulary by JSD, the rest by sorted L1 (ULD)."""

    needs: ClassVar[frozenset] = frozenset({"token_head", "teacher_tokens"})
    same_tokenizer: ClassVar[bool] = False

    temperature: float = setting(1.0, low=0.0, low_open=True, tune=TEMPERATURE,
                                 doc="softmax temperature of both distributions (no T² factor, as ULD)")
    gold_weight: float = setting(1.0, low=0.0, tune=KD_WEIGHT, doc="weight of the span distance beside cross-entropy")
    beta: float = setting(0.5, low=0.0, high=1.0, doc="JSD β of the shared-vocabulary part (TRL's default 0.5)")
    hybrid: bool = setting(True, doc="shared vocabulary by JSD, the rest by sorted L1 (false: sorted L1 over all)")
    matched_weight: float | None = setting(None, low=0.0, high=1.0, kind=float,
                                           doc="weight of the shared part (the rest gets 1 − it); null: the shared "
                                               "entries' fraction of the teacher's vocabulary (TRL's default)")


@declare("feature_align")
@dataclass
class FeatureAlignSettings(KDSettings):
    """The companion paper: hidden alignment + InfoNCE + logit divergence + CE."""

    alignment: bool = setting(True, doc="projected hidden-state alignment over the layer map")
    contrastive: bool = setting(True, doc="in-batch InfoNCE of response-pooled states")
    logit: bool = setting(True, doc="the logit divergence term")
    contrast_temperature: float = setting(0.1, low=0.0, low_open=True, tune={"loguniform": [0.03, 0.5]},
                                          doc="InfoNCE temperature")
    dynamic_weights: bool = setting(True, tune=BOOL, doc="gradient-aware loss weights")
    ablate: str | None = setting(None, choices=(None, "none", "alignment", "contrastive", "logit", "dynamic_weights"),
                                 doc="switch one module off (ablation grids)")


@declare("tinybert")
@dataclass
class TinyBERTSettings(MethodSettings):
    """TinyBERT: embedding, hidden, attention and prediction-layer terms."""

    needs: ClassVar[frozenset] = frozenset({"masked_inputs", "attention_qkv"})

    temperature: float = setting(1.0, low=0.0, low_open=True, tune=TEMPERATURE, doc="prediction-layer temperature")
    dynamic_weights: bool = setting(False, tune=BOOL, doc="gradient-aware loss weights")


@declare("minilm")
@dataclass
class MiniLMSettings(MethodSettings):
    """MiniLM v2: self-attention relations of the last layer."""

    needs: ClassVar[frozenset] = frozenset({"attention_qkv"})

    relation_heads: int | None = setting(None, low=1, kind=int, doc="relation heads (null: gcd of the head counts)")
    dynamic_weights: bool = setting(False, tune=BOOL, doc="gradient-aware loss weights")


@declare("minillm")
@dataclass
class MiniLLMSettings(MethodSettings):
    """MiniLLM, token level: reverse KL + its language-modelling term."""

    needs: ClassVar[frozenset] = frozenset({"token_head"})

    temperature: float = setting(1.0, low=0.0, low_open=True, tune=TEMPERATURE, doc="softmax temperature (× T²)")
    ce_weight: float = setting(1.0, low=0.0, tune=KD_WEIGHT,
                               doc="weight of the language-modelling (cross-entropy) term, MiniLLM's L_PT")
    dynamic_weights: bool = setting(False, tune=BOOL, doc="gradient-aware loss weights")


@declare("gkd")
@dataclass
class GKDSettings(MethodSettings):
    """GKD: generalized JSD(β), on-policy with probability λ."""

    needs: ClassVar[frozenset] = frozenset({"token_head"})

    beta: float = setting(0.5, low=0.0, high=1.0, tune={"uniform": [0.1, 0.9]},
                          doc="JSD β (0 = forward KL, 1 = reverse KL)")
    temperature: float = setting(1.0, low=0.0, low_open=True, tune=TEMPERATURE, doc="softmax temperature (× T²)")
    lmbda: float = setting(0.0, low=0.0, high=1.0, needs="generates",
                           doc="probability of a batch of the student's own samples (on-policy)")
    seq_kd: bool = setting(False, needs="generates", doc="the other batches take the teacher's greedy responses")
    max_new_tokens: int = setting(32, low=1, doc="longest generated response")
    ce_weight: float = setting(0.0, low=0.0, tune={"choice": [0.0, 1.0]},
                               doc="cross-entropy on the batch's responses unless they are the student's own "
                                   "samples (the paper has none: its students are fine-tuned first)")
    dynamic_weights: bool = setting(False, doc="gradient-aware loss weights (with ce_weight > 0)")


@declare("ddk")
@dataclass
class DDKSettings(MethodSettings):
    """DDK: CE + γ·KL with domain-discrepancy-driven sampling."""

    needs: ClassVar[frozenset] = frozenset({"masked_inputs"})

    update_every: int = setting(20, low=1, doc="optimizer steps between domain-weight updates")
    smoothing: float = setting(0.5, low=0.0, high=1.0, tune={"uniform": [0.1, 0.9]},
                               doc="factor-smoothing of the domain weights")
    tau: float = setting(1.0, low=0.0, low_open=True, doc="softmax temperature of the discrepancies")
    temperature: float = setting(1.0, low=0.0, low_open=True, tune=TEMPERATURE, doc="KD temperature (× T²)")
    kd_weight: float = setting(1.0, low=0.0, tune=KD_WEIGHT, doc="γ, the KL's weight beside cross-entropy")
    hidden_mse: bool = setting(False, doc="an extra last-layer hidden MSE (not in the paper)")
    eval_pairs: int = setting(256, low=1, doc="validation pairs measured per update")
    dynamic_weights: bool = setting(False, tune=BOOL, doc="gradient-aware loss weights")


@declare("mixkd")
@dataclass
class MixKDSettings(MethodSettings):
    """MixKD: task CE, mixup CE and KD on clean and mixed inputs."""

    needs: ClassVar[frozenset] = frozenset({"masked_inputs"})

    alpha: float = setting(0.4, low=0.0, tune={"uniform": [0.1, 1.0]}, doc="Beta(α, α) of the mixing ratio")
    temperature: float = setting(1.0, low=0.0, low_open=True, tune=TEMPERATURE, doc="KD temperature (× T²)")
    kd_weight: float = setting(1.0, low=0.0, tune=KD_WEIGHT, doc="weight of both KD terms beside the CE terms")
    hidden_mse: bool = setting(False, doc="an extra last-layer hidden MSE on mixed inputs (not in the paper)")
    dynamic_weights: bool = setting(False, tune=BOOL, doc="gradient-aware loss weights")


@declare("distillseq")
@dataclass
class DistillSeqSettings(MethodSettings):
    """Black-box label distillation."""

    needs: ClassVar[frozenset] = frozenset({"masked_inputs"})
    multi_term: ClassVar[bool] = False


# ------------------------------------------------------------------------------------------------ reading
def settings_of(name: str) -> type[MethodSettings] | None:
    """The settings class of method ``name``: declared here or by a plugin (``@declare``, or the method
    class's ``settings`` attribute); None for a plugin method that declares none."""
    if name in SETTINGS:
        return SETTINGS[name]
    from ..registry import METHODS

    if name in METHODS:
        return getattr(METHODS.get(name), "settings", None)
    return None


def setting_names(name: str) -> tuple[str, ...]:
    """The keys method ``name`` takes in ``method.params`` (for an undeclared plugin method: its
    constructor's keywords, less ``STUDY_SETTINGS``)."""
    cls = settings_of(name)
    if cls is not None:
        common = [f.name for f in dataclasses.fields(MethodSettings)]
        own = [f.name for f in dataclasses.fields(cls) if f.name not in common]
        return tuple(own + [n for n in common if n in cls.__dataclass_fields__])
    import inspect

    from ..registry import METHODS

    sig = inspect.signature(METHODS.get(name).__init__)
    return tuple(p for p in list(sig.parameters)[3:] if p not in STUDY_SETTINGS)


def declared(name: str) -> dict[str, dataclasses.Field]:
    """{setting name: its dataclass field} of method ``name`` ({} for an undeclared plugin)."""
    cls = settings_of(name)
    return {f.name: f for f in dataclasses.fields(cls)} if cls is not None else {}


def method_needs(name: str, params: dict | None = None) -> set[str]:
    """The family capabilities method ``name`` needs with these ``params`` (its own, and those of the
    settings that are set to a truthy value)."""
    cls = settings_of(name)
    if cls is None:
        return set()
    need = set(cls.needs)
    for key, f in declared(name).items():
        value = (params or {}).get(key, f.default)
        if f.metadata.get("needs") and value:
            need.add(f.metadata["needs"])
    return need


def cross_tokenizer(name: str) -> bool:
    """Whether method ``name`` runs when teacher and student use different tokenizers (it compares
    no token-by-token vocabulary entries, or reads no teacher); a plugin that declares nothing does not."""
    cls = settings_of(name)
    return bool(cls is not None and not cls.same_tokenizer)


def is_reference(name: str) -> bool:
    """Whether ``name`` is a reference point (trained without the teacher), not a distillation method."""
    cls = settings_of(name)
    return bool(cls is not None and cls.reference)


def check_value(name: str, key: str, value) -> str | None:
    """Why ``value`` is not allowed for setting ``key`` of method ``name`` (None when it is)."""
    f = declared(name).get(key)
    if f is None:
        return None
    m, default = f.metadata, f.default
    if m.get("choices") is not None:
        return None if value in m["choices"] else \
            f"{value!r} is not one of {', '.join('null' if c is None else str(c) for c in m['choices'])}"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if value is None:
        return None if default is None else "expected a value, got null"
    if m.get("kind") is dict:
        ok = isinstance(value, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             and math.isfinite(v) for v in value.values())
        return None if ok else f"expected a mapping of loss term → finite number, got {value!r}"
    numeric = isinstance(default, (int, float)) or m.get("low") is not None or m.get("high") is not None
    if numeric:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        if (isinstance(default, int) and not isinstance(default, bool) or m.get("kind") is int) \
                and not isinstance(value, int):
            return f"expected an integer, got {value!r}"
        lo, hi = m.get("low"), m.get("high")
        if lo is not None and (value < lo or (m["low_open"] and value == lo)) or \
                hi is not None and (value > hi or (m["high_open"] and value == hi)):
            if lo == 0 and m["low_open"] and hi is None:
                return f"{value!r} must be a positive number"
            return f"{value!r} must be in {range_text(f)}"
    return None


def range_text(f: dataclasses.Field) -> str:
    """A setting's allowed range as interval text, e.g. ``(0, inf)`` or ``[0, 1]``."""
    m = f.metadata
    lo = "-inf" if m.get("low") is None else f"{m['low']:g}"
    hi = "inf" if m.get("high") is None else f"{m['high']:g}"
    return f"{'(' if m.get('low_open') or m.get('low') is None else '['}{lo}, {hi}" \
           f"{')' if m.get('high_open') or m.get('high') is None else ']'}"


def tunable(name: str, fixed: dict | None = None) -> dict[str, dict]:
    """{setting: search domain} a compare study tunes for method ``name``: every declared setting with a
    ``tune`` domain that ``fixed`` (the compare entry's own params) does not pin. ``dynamic_weights``
    only for multi-term methods."""
    cls = settings_of(name)
    if cls is None:
        return {}
    out = {}
    for key, f in declared(name).items():
        dom = f.metadata.get("tune")
        if key == "dynamic_weights":  # an option of every multi-term method, not one method's privilege
            dom = BOOL if cls.multi_term else None
        if dom is None or key in (fixed or {}):
            continue
        out[key] = dom
    return out


def on_range_edge(domain: dict, value, tolerance: float = 0.05) -> bool:
    """Whether a tuned ``value`` sits on the edge of its search ``domain``: within ``tolerance`` of the
    range (in log space for ``loguniform``) for a continuous domain, the first or last of three or more
    ordered numeric choices. Booleans and unordered choices never are."""
    kind, values = next(iter(domain.items()))
    if value is None or isinstance(value, bool):
        return False
    if kind in ("choice", "grid"):
        nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return len(nums) == len(values) >= 3 and value in (min(nums), max(nums))
    lo, hi = float(values[0]), float(values[1])
    if kind == "loguniform":
        lo, hi, value = math.log(lo), math.log(hi), math.log(max(float(value), 1e-300))
    span = hi - lo
    return span > 0 and (float(value) - lo <= tolerance * span or hi - float(value) <= tolerance * span)

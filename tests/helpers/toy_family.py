"""A plugin that declares a model family of its own (``toy_lm``: a token head, no masked inputs, no attention
q/k/v, no generation), for the tests of the family seam. Its torch side reuses the causal family's."""

from raykd.models.families import FamilySpec, register_family

TOY = register_family(FamilySpec(
    name="toy_lm", implementation="raykd.models.families.causal_lm:CausalLM", archs=("toyarch",),
    evaluation="raykd.evaluation.causal_lm:CausalEvaluation",
    hf_suffixes=("ForToyLM",), capabilities=frozenset({"token_head"}), metric_keys=("perplexity", "answer_accuracy"),
    default_metric="val/perplexity", reference_method="sft", samplers=("uniform",)))

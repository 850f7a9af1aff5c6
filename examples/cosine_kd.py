"""An example raykd plugin: a new distillation objective in ~30 lines.

Use it from a study's YAML (or ``python -m raykd.tune --plugin examples.cosine_kd``)::

    plugins: [examples.cosine_kd]
    method: {name: cosine_kd, params: {margin: 0.0}}

raykd imports the module on the driver (before validating the config, so ``cosine_kd`` and its
``margin`` are valid names there) and on every Ray worker that runs a trial. Its settings are declared
once (``CosineKDSettings``): their ranges are checked at load time and a compare study tunes them
(``compare: {methods: [structural, cosine_kd], …}``) like a built-in method's.
"""

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from raykd.distill import losses as L
from raykd.distill.methods import DistillMethod
from raykd.distill.settings import MethodSettings, declare, setting
from raykd.registry import METHODS


@declare("cosine_kd")
@dataclass
class CosineKDSettings(MethodSettings):
    margin: float = setting(0.0, low=0.0, high=1.0, tune={"uniform": [0.0, 0.3]},
                            doc="cosine distance below which the representation term is zero")


@METHODS.register("cosine_kd")
class CosineKD(DistillMethod):
    """The student's mean-pooled last hidden state, mapped to the teacher's width, pulled towards the
    teacher's (``cosine`` = mean of max(0, 1 − cos − margin)), beside the student's own masked-LM loss
    on the same corrupted inputs (``mlm``)."""

    uses_mlm = True

    def __init__(self, student, teacher_config, margin: float = 0.0, weights=None, dynamic_weights=False):
        super().__init__(student, teacher_config, weights, dynamic_weights)
        self.margin = float(margin)
        self.to_teacher = nn.Linear(self.s_hidden, self.t_hidden)

    def losses(self, inputs, targets, out):
        mask, chosen = inputs["mask"], inputs["chosen"]
        student = self.to_teacher(L.masked_mean(out.hidden_states[-1], mask))
        teacher = L.masked_mean(targets["hidden"][self.t_layers], mask)
        cos = F.cosine_similarity(student, teacher, dim=-1)
        return {"cosine": (1.0 - cos - self.margin).clamp_min(0.0).mean(),
                "mlm": F.cross_entropy(out.logits[chosen], inputs["ids"][chosen])}

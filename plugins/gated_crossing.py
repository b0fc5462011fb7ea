"""Example plugin: a crossing block defined outside the package, picked by name from YAML.

Files in ./plugins/ (or in any directory of $LIGHTNING_RETRIEVAL_PLUGIN_PATH) are imported before a
config is parsed. Subclass a kind's base class and give the class a registry name; nothing else to do.
An installed package can do the same through the entry-point group ``lightning_retrieval.plugins``.
"""

import torch
from torch import nn

from lightning_retrieval.models.crossing import CrossingBlock
from lightning_retrieval.models.crossing.base import mlp
from lightning_retrieval.registry import register


@register("gated_mlp")
class GatedFieldCrossing(CrossingBlock):
    """Field gating then MLP: each field is scaled by a learned, input-dependent gate in (0, 2).

    ``[B, F, D]`` -> gates ``[B, F]`` from the flattened fields -> gated fields -> MLP -> ``[B, hidden_dims[-1]]``.
    """

    def __init__(self, num_fields: int, field_dim: int, hidden_dims: list[int] = [128], gate_hidden: int = 32):  # noqa: B006
        super().__init__(num_fields, field_dim)
        self.gate = nn.Sequential(
            nn.Linear(num_fields * field_dim, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, num_fields)
        )
        self.net = mlp([num_fields * field_dim, *hidden_dims])
        self.output_dim = hidden_dims[-1]

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        self.check_input(fields)
        gates = 2 * torch.sigmoid(self.gate(fields.flatten(1)))  # [B, F]
        return self.net((fields * gates[:, :, None]).flatten(1))

"""Crossing blocks: shapes, gradients to every parameter, use in both towers, DHEN from YAML, dim errors."""

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from lightning_retrieval.cli import prepare_registry
from lightning_retrieval.models.crossing import (
    CrossingFactory,
    DCNv2Crossing,
    DHENCrossing,
    MaskNetCrossing,
    MLPCrossing,
    TransformerCrossing,
)
from lightning_retrieval.models.crossing.dhen import DHENLayer
from lightning_retrieval.tasks import RetrievalTask

prepare_registry()

BLOCKS = {
    "mlp": lambda f, d: MLPCrossing(f, d, hidden_dims=[32, 16]),
    "masknet_pinterest": lambda f, d: MaskNetCrossing(
        f, d, variant="pinterest", num_blocks=3, block_dim=12, output_dims=[20]
    ),
    "masknet_parallel": lambda f, d: MaskNetCrossing(
        f, d, variant="parallel", num_blocks=2, block_dim=12, output_dims=[20]
    ),
    "masknet_serial": lambda f, d: MaskNetCrossing(
        f, d, variant="serial", num_blocks=3, block_dim=12, output_dims=[20]
    ),
    "transformer_flatten": lambda f, d: TransformerCrossing(f, d, num_layers=2, num_heads=2, ff_dim=16),
    "transformer_cls": lambda f, d: TransformerCrossing(f, d, num_heads=4, ff_dim=16, pooling="cls"),
    "dcnv2": lambda f, d: DCNv2Crossing(f, d, num_cross_layers=2, deep_dims=[24]),
    "dcnv2_lowrank_parallel": lambda f, d: DCNv2Crossing(f, d, low_rank=4, deep_dims=[24], structure="parallel"),
    "dhen_default": lambda f, d: DHENCrossing(f, d),
    "dhen_concat": lambda f, d: DHENCrossing(
        f, d, layers=[[BLOCKS["mlp"], BLOCKS["dcnv2"]]], combine="concat", output_dims=[10]
    ),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_shapes_and_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    block = BLOCKS[name](3, 8)
    out = block(torch.randn(5, 3, 8))
    assert out.shape == (5, block.output_dim)
    (out * torch.randn_like(out)).sum().backward()
    dead = [n for n, p in block.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


def test_pinterest_block_gates_the_input_with_its_own_projection():
    """x ⊙ project(x): with the projection zeroed, the gated input is 0 whatever x is."""
    torch.manual_seed(0)
    block = MaskNetCrossing(2, 4, variant="pinterest", num_blocks=1, block_dim=4, output_dims=[4]).eval()
    gated = block.blocks[0]  # the block's own output, before the bottleneck head
    x1, x2 = torch.randn(1, 8), torch.randn(1, 8)
    assert not torch.allclose(gated(x1), gated(x2))
    with torch.no_grad():
        gated.project.net[-1].weight.zero_()
        gated.project.net[-1].bias.zero_()
    torch.testing.assert_close(gated(x1), gated(x2))


def test_serial_masks_come_from_the_raw_embedding():
    block = MaskNetCrossing(2, 4, variant="serial", num_blocks=2, block_dim=6, output_dims=[3])
    assert block.blocks[1].mask.net[0].in_features == 8  # mask input = F*D, not the previous block's width
    assert block.blocks[1].output.in_features == 6


@pytest.mark.parametrize("tower", ["user_tower", "item_tower"])
@pytest.mark.parametrize("name", ["masknet_pinterest", "transformer_flatten", "dcnv2", "dhen_default"])
def test_block_works_in_either_tower(movielens_dm, name, tower):
    from lightning_retrieval.models.towers import FeatureCrossingTower

    factory = BLOCKS[name]
    model = RetrievalTask(
        feature_spec=movielens_dm.feature_spec,
        embedding_dim=16,
        **{tower: lambda f, d: FeatureCrossingTower(f, d, crossing=factory, output_dim=64)},
    )
    batch = next(iter(movielens_dm.train_dataloader()))
    loss = model.compute_loss(batch)
    loss.backward()
    crossing = getattr(model, tower).crossing
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in crossing.parameters())


def test_dhen_composition_from_yaml_uses_registry_names():
    parser = ArgumentParser()
    parser.add_argument("--crossing", type=CrossingFactory)
    cfg = parser.parse_args(
        [
            "--crossing",
            yaml.safe_dump(
                {
                    "class_path": "dhen",
                    "init_args": {
                        "layers": [
                            [{"class_path": "mlp", "init_args": {"hidden_dims": [32]}}, {"class_path": "masknet"}],
                            [{"class_path": "dcnv2"}, {"class_path": "transformer", "init_args": {"num_heads": 2}}],
                        ]
                    },
                }
            ),
        ]
    )
    block = parser.instantiate_classes(cfg).crossing(4, 8)
    kinds = [[type(m).__name__ for m in layer.blocks] for layer in block.layers]
    assert kinds == [["MLPCrossing", "MaskNetCrossing"], ["DCNv2Crossing", "TransformerCrossing"]]
    assert block(torch.randn(3, 4, 8)).shape == (3, 32)


def test_dhen_default_is_the_pinterest_configuration():
    block = DHENCrossing(3, 8)
    kinds = [[type(m).__name__ for m in layer.blocks] for layer in block.layers]
    assert kinds == [["MLPCrossing", "MaskNetCrossing"], ["MLPCrossing", "TransformerCrossing"]]
    assert block.layers[0].blocks[1].variant == "pinterest"


def test_dhen_layer_is_residual_and_keeps_field_shape():
    layer = DHENLayer(3, 8, [BLOCKS["mlp"]], "sum", 0.0)
    with torch.no_grad():
        for p in layer.projections.parameters():
            p.zero_()
    x = torch.randn(4, 3, 8)
    torch.testing.assert_close(layer(x), layer.norm(x))  # zero ensemble output -> LN(input)


def test_incompatible_dims_give_clear_errors():
    with pytest.raises(ValueError, match=r"num_heads=3 must divide field_dim=8 \(valid: \[1, 2, 4, 8\]\)"):
        TransformerCrossing(3, 8, num_heads=3)
    with pytest.raises(ValueError, match=r"expects fields of shape \[B, 3, 8\]"):
        MaskNetCrossing(3, 8)(torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="unknown masknet variant"):
        MaskNetCrossing(3, 8, variant="stacked")
    with pytest.raises(ValueError, match="dhen needs at least one layer"):
        DHENCrossing(3, 8, layers=[])
    with pytest.raises(ValueError, match="at least one module"):
        DHENCrossing(3, 8, layers=[[]])
    with pytest.raises(ValueError, match="num_cross_layers"):
        DCNv2Crossing(3, 8, num_cross_layers=0)

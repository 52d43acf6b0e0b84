"""The families build the papers' models and run on real tensors at proxy and target sizes."""

import pytest
import torch
from torch import nn

import spaces
from spaces.coatnet import LAYOUTS, MBConv, RelPosAttention, TransformerBlock
from spaces.convmixer import ConvMixerConfig


def paper_convmixer(h, depth, kernel_size=9, patch_size=7, n_classes=1000):
    """The ConvMixer from the paper's appendix, verbatim but for the names."""

    class Residual(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x) + x

    return nn.Sequential(
        nn.Conv2d(3, h, kernel_size=patch_size, stride=patch_size), nn.GELU(),
        nn.BatchNorm2d(h),
        *[nn.Sequential(
            Residual(nn.Sequential(
                nn.Conv2d(h, h, kernel_size, groups=h, padding="same"), nn.GELU(),
                nn.BatchNorm2d(h))),
            nn.Conv2d(h, h, kernel_size=1), nn.GELU(), nn.BatchNorm2d(h),
        ) for _ in range(depth)],
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(h, n_classes))


def test_convmixer_computes_exactly_what_the_paper_code_computes():
    torch.manual_seed(0)
    ours = spaces.get("convmixer").build(ConvMixerConfig(48, 3, 4, 5), 10, 32).eval()
    paper = paper_convmixer(48, 3, kernel_size=5, patch_size=4, n_classes=10).eval()
    ours_state, paper_state = ours.state_dict(), paper.state_dict()
    assert [v.shape for v in ours_state.values()] == [v.shape for v in paper_state.values()]
    paper.load_state_dict(dict(zip(paper_state, ours_state.values(), strict=True)))
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(ours(x), paper(x))


def test_convmixer_relu_variant_uses_relu():
    model = spaces.get("convmixer").build(ConvMixerConfig(32, 2, 2, 3, "relu"), 10, 32)
    acts = {type(m) for m in model.modules() if isinstance(m, (nn.GELU, nn.ReLU))}
    assert acts == {nn.ReLU}


def _tiny_coatnet(layout, stem_stride=1):
    return spaces.CoAtNetConfig(layout, 1, 2, 1, 1, 16, 32, 64, 64, 96, stem_stride)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("image_size", [32, 64, 224])
def test_coatnet_layouts_run_at_proxy_and_target_sizes(layout, image_size):
    family = spaces.get("coatnet")
    config = family.to_target(_tiny_coatnet(layout), image_size)
    model = family.build(config, 7, image_size).eval()
    kinds = ["T" if isinstance(stage[0], TransformerBlock) else "C" for stage in model.stages]
    assert "".join(kinds) == layout
    with torch.no_grad():
        assert model(torch.randn(2, 3, image_size, image_size)).shape == (2, 7)
        # the last stage keeps at least 4x4 maps at every size (the transfer rule's point)
        assert model.forward_features(torch.randn(1, 3, image_size, image_size)).shape[-1] >= 4


def test_coatnet_attention_has_one_head_per_32_channels_and_uses_its_position_bias():
    model = spaces.get("coatnet").build(_tiny_coatnet("CTTT"), 10, 32).eval()
    attns = [m for m in model.modules() if isinstance(m, RelPosAttention)]
    assert [a.heads for a in attns] == [2, 2, 2, 3]  # D2=64, D3=64, D4=96
    # S2 runs at 16x16 on the 32 px proxy: a (2*16-1)^2 table per head
    assert attns[0].bias_table.shape == (31 * 31, 2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        attns[0].bias_table.add_(torch.randn_like(attns[0].bias_table))
        assert not torch.allclose(before, model(x))


def test_coatnet_mbconv_expands_from_the_output_width_with_se_quarter():
    block = MBConv(64, 96, 2, 0.0)
    assert block.expand[0].out_channels == 96 * 4
    assert block.se.reduce.out_channels == 24
    assert block(torch.randn(2, 64, 16, 16)).shape == (2, 96, 8, 8)


def test_convmlp_runs_at_proxy_and_target_sizes():
    family = spaces.get("convmlp")
    proxy = spaces.ConvMLPConfig(32, 1, 1, 1, 1, 32, 64, 96, 2, 2, 2)
    for size, stem, last in [(32, 1, 4), (64, 2, 4), (128, 4, 4), (224, 4, 7)]:
        config = family.to_target(proxy, size)
        assert config.stem_stride == stem
        model = family.build(config, 5, size).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
            assert model.forward_features(torch.randn(1, 3, size, size)).shape[1:3] == (last, last)


def test_stochastic_depth_is_active_in_training_only():
    family = spaces.get("convmlp")
    config = spaces.ConvMLPConfig(32, 1, 4, 1, 1, 32, 64, 96, 2, 2, 2)
    model = family.build(config, 5, 32, drop_path=0.5)
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        assert not torch.allclose(a, model(x))


@pytest.mark.parametrize("name", ["convmixer", "convmlp", "coatnet"])
def test_default_proxy_model_trains_a_step(name):
    """A real backward pass through the default proxy of each family (CPU, tiny batch)."""
    family = spaces.get(name)
    config = family.space({"L3": 1, "L2": 1} if name == "coatnet" else {}).fixed_config()
    model = family.build(config, 10, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    opt.step()
    assert torch.isfinite(loss)

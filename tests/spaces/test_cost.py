"""The cost model: exact params, MACs with attention counted on every device, latency."""

import random

import pytest
import torch
from torch import nn

import spaces
from spaces.convmixer import ConvMixerConfig
from spaces.cost import (
    costs,
    count_costs,
    count_macs,
    count_params,
    measure_latency,
    target_and_proxy_costs,
)


def test_convmixer_macs_by_hand():
    h, d, p, k, size, classes = 64, 3, 4, 5, 32, 10
    model = spaces.get("convmixer").build(ConvMixerConfig(h, d, p, k), classes, size)
    tokens = (size // p) ** 2
    by_hand = (3 * p * p * h * tokens            # patch embedding
               + d * (h * k * k + h * h) * tokens  # depthwise + pointwise
               + h * classes)                     # head
    assert count_macs(model, size) == by_hand
    assert count_macs(model, size, batch_size=3) == 3 * by_hand


def test_attention_is_counted_the_same_on_cpu_and_meta():
    """On the CPU, fused attention has no flop formula in torch; ours must count it."""
    family = spaces.get("coatnet")
    config = spaces.CoAtNetConfig("CTTT", 1, 1, 1, 1, 16, 32, 64, 64, 64)
    cpu = count_macs(family.build(config, 10, 32), 32)
    with torch.device("meta"):
        meta = count_macs(family.build(config, 10, 32), 32)
    assert cpu == meta
    # attention alone: q@k and attn@v over N tokens, per block; S2 16x16, S3 8x8, S4 4x4
    attention = sum(2 * n * n * c for n, c in [(256, 64), (64, 64), (16, 64)])
    convs_only = spaces.CoAtNetConfig("CCCC", 1, 1, 1, 1, 16, 32, 64, 64, 64)
    assert cpu > attention
    assert cpu != count_macs(family.build(convs_only, 10, 32), 32)


def test_cpu_sdpa_without_mask_is_counted():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return nn.functional.scaled_dot_product_attention(x, x, x)

    q = torch.randn(2, 4, 49, 32)
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        Attn()(q)
    assert counter.get_total_flops() == 2 * (2 * 2 * 4 * 49 * 49 * 32)


@pytest.mark.parametrize("name", ["convmixer-768-32", "convmlp-s", "coatnet-0"])
def test_fast_counting_equals_counting_the_whole_model(name):
    """Counting drops norms and activations first; the count must not change."""
    family, preset = spaces.preset(name)
    with torch.device("meta"):
        whole = count_macs(family.build(preset.config, 1000, 224), 224)
    assert count_costs(family, preset.config, 224, 1000).macs == whole


def test_params_are_exact():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2))
    assert count_params(model) == (3 * 8 * 9 + 8) + 16 + (8 * 2 + 2)


def test_search_costs_are_those_of_the_target_beside_the_proxy():
    family = spaces.get("convmixer")
    proxy = ConvMixerConfig(256, 8, 1, 9)
    costs = target_and_proxy_costs(family, proxy)
    assert costs["params"] == 256 * (3 * 49 + 1) + 2 * 256 + 8 * (256 * 82 + 512 + 256 * 257
                                                                  + 512) + 257 * 1000
    assert costs["macs"] == costs["macs_224"]
    assert costs["proxy_params"] < costs["params"]  # 10 classes, 1x1 patches
    at_128 = target_and_proxy_costs(family, proxy, image_size=128)
    assert at_128["macs_224"] == costs["macs"] and at_128["macs"] < costs["macs"]


def test_latency_is_a_median_with_its_conditions_recorded():
    model = spaces.get("convmixer").build(ConvMixerConfig(32, 2, 4, 3), 10, 32)
    result = measure_latency(model, 32, batch_size=2, warmup=1, repeats=5)
    assert result.median_ms > 0
    assert (result.device, result.dtype, result.batch_size, result.repeats) == \
           ("cpu", "float32", 2, 5)
    assert result.peak_memory_bytes is None


@pytest.mark.gpu
def test_latency_and_peak_memory_on_cuda():
    model = spaces.get("convmixer").build(ConvMixerConfig(256, 8, 2, 5), 10, 32)
    result = measure_latency(model, 32, device="cuda", dtype=torch.bfloat16, batch_size=64)
    assert result.median_ms > 0 and result.peak_memory_bytes > 0


def test_closed_form_costs_equal_counted_ones():
    rng = random.Random(0)
    family = spaces.get("convmixer")
    for _ in range(25):
        config = ConvMixerConfig(h=rng.choice([8, 24, 64, 100]), d=rng.randint(1, 6),
                                 p=rng.choice([1, 2, 3, 7, 14]), k=rng.choice([1, 3, 5, 9]),
                                 act=rng.choice(["gelu", "relu"]))
        size, classes = rng.choice([32, 64, 100, 128, 224]), rng.choice([10, 1000])
        counted = count_costs(family, config, size, classes)
        assert family.exact_costs(config, size, classes) == (counted.params, counted.macs)
        assert costs(family, config, size, classes) == counted

"""The memory layout is chosen by timing, and timing leaves no trace on the model."""

import time

import pytest
import torch
from torch import nn

import spaces
from spaces.convmixer import ConvMixerConfig
from trainers.layout import LAYOUTS, choose_layout, faster_layout


class SlowIn(nn.Module):
    """A conv that is slow when its input is in one layout."""

    def __init__(self, slow: torch.memory_format):
        super().__init__()
        self.conv, self.slow = nn.Conv2d(3, 4, 3), slow

    def forward(self, x):
        if x.is_contiguous(memory_format=self.slow):  # (2, 3, 8, 8) is in only one of them
            time.sleep(0.02)
        return self.conv(x)


@pytest.mark.parametrize("slow,expected", [(torch.channels_last, "contiguous"),
                                           (torch.contiguous_format, "channels_last")])
def test_the_faster_layout_wins(slow, expected):
    model = SlowIn(slow)
    best, seconds = faster_layout(model, torch.randn(2, 3, 8, 8), None)
    assert best == expected
    assert set(seconds) == set(LAYOUTS) and seconds[best] < seconds[next(
        n for n in LAYOUTS if n != best)]
    assert model.conv.weight.is_contiguous(memory_format=LAYOUTS[best])


def test_timing_changes_no_weight_buffer_gradient_or_random_state():
    torch.manual_seed(0)
    model = nn.Sequential(spaces.get("convmixer").build(ConvMixerConfig(16, 2, 4, 3), 10, 32),
                          nn.Dropout(0.5))  # draws random numbers in training mode
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.randn(4, 3, 32, 32)
    rng = torch.get_rng_state()
    best, _ = faster_layout(model, example, None)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats included
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training
    assert best in LAYOUTS


def test_a_run_chooses_on_a_batch_of_its_shape_without_touching_its_random_numbers():
    model = spaces.get("convmixer").build(ConvMixerConfig(16, 2, 4, 3), 10, 32)
    rng = torch.get_rng_state()
    best, seconds = choose_layout(model, 8, 32, torch.bfloat16)
    assert torch.equal(torch.get_rng_state(), rng)
    assert best in LAYOUTS and all(s > 0 for s in seconds.values())

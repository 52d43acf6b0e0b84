"""Every preset is the published model: parameter counts and MACs at its native size."""

import pytest
import torch

import spaces
from spaces.cost import costs
from tests.helpers import PUBLISHED_PARAMS

# (published params, relative tolerance) at the native size with 1000 classes
# timm's coatnet_{0..3}_224: the paper's model, to the parameter
TIMM_COATNET = {"coatnet-0": 25_036_820, "coatnet-1": 42_225_776, "coatnet-2": 74_684_744,
                "coatnet-3": 166_966_264}
PUBLISHED_MACS = {  # at 224 px: (multiply-adds, relative tolerance)
    "convmixer-1536-20": (51.1e9, 0.05),
    "convmlp-s": (2.4e9, 0.10),
    "coatnet-0": (4.2e9, 0.15),
}


def test_every_preset_has_a_published_reference_or_is_the_cifar_model():
    assert set(spaces.preset_names()) == set(PUBLISHED_PARAMS) | {"convmixer-256-8"}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_params_match_the_paper(name):
    family, preset = spaces.preset(name)
    assert (preset.image_size, preset.num_classes) == (224, 1000)
    got = costs(family, preset.config, 224, 1000).params
    want, tol = PUBLISHED_PARAMS[name]
    assert abs(got - want) / want <= tol, f"{name}: {got} params, published {want}"


@pytest.mark.parametrize("name", sorted(TIMM_COATNET))
def test_coatnet_matches_timm_exactly(name):
    family, preset = spaces.preset(name)
    assert costs(family, preset.config, 224, 1000).params == TIMM_COATNET[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_preset_macs_match_the_paper(name):
    family, preset = spaces.preset(name)
    got = costs(family, preset.config, 224, 1000).macs
    want, tol = PUBLISHED_MACS[name]
    assert abs(got - want) / want <= tol, f"{name}: {got / 1e9:.2f} GMACs, published {want}"


def test_cifar_convmixer_is_native_at_32px():
    family, preset = spaces.preset("convmixer-256-8")
    assert (preset.image_size, preset.num_classes) == (32, 10)
    # 256*(3*4+1) + 2*256 + 8*(256*26 + 2*256 + 256*257 + 2*256) + 257*10
    assert costs(family, preset.config, 32, 10).params == 594_186


@pytest.mark.parametrize("name", spaces.preset_names())
def test_preset_survives_the_round_trip_through_its_proxy(name):
    family, preset = spaces.preset(name)
    proxy = family.to_proxy(preset.config, preset.image_size)
    assert family.to_target(proxy, preset.image_size) == preset.config
    # and the proxy itself is a model that runs on 32 px images
    with torch.device("meta"):
        out = family.build(proxy, 10, 32)(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", spaces.preset_names())
def test_preset_proxy_lies_inside_the_default_search_space(name):
    family, preset = spaces.preset(name)
    proxy = family.to_proxy(preset.config, preset.image_size)
    for param in family.params:
        assert param.admits(getattr(proxy, param.name)), (name, param.name)

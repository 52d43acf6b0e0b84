"""Transfer rules between the 32 px proxy and a target resolution, both ways."""

import pytest

import spaces
from spaces.convmixer import ConvMixerConfig


@pytest.mark.parametrize("size, stride", [(32, 1), (48, 1), (64, 2), (96, 2), (128, 4),
                                          (224, 4), (384, 4)])
def test_stem_stride_keeps_the_last_stage_at_least_4x4(size, stride):
    assert spaces.stem_stride_for(size) == stride
    assert size // (stride * 8) >= 4 or stride == 1


@pytest.mark.parametrize("proxy_p, size, target_p", [(1, 224, 7), (2, 224, 14), (4, 224, 28),
                                                     (1, 128, 4), (2, 128, 8), (2, 32, 2)])
def test_convmixer_patch_keeps_the_token_grid(proxy_p, size, target_p):
    family = spaces.get("convmixer")
    proxy = ConvMixerConfig(256, 8, proxy_p, 5)
    target = family.to_target(proxy, size)
    assert target == ConvMixerConfig(256, 8, target_p, 5)
    assert size // target.p == 32 // proxy_p  # same token grid
    assert family.to_proxy(target, size) == proxy


def test_convmixer_paper_presets_map_to_cifar_patches():
    family = spaces.get("convmixer")
    assert family.to_proxy(spaces.preset("convmixer-1536-20")[1].config, 224).p == 1
    assert family.to_proxy(spaces.preset("convmixer-1024-20")[1].config, 224).p == 2


@pytest.mark.parametrize("name", ["convmlp", "coatnet"])
def test_hierarchical_families_transfer_everything_but_the_stem(name):
    family = spaces.get(name)
    proxy = family.default_proxy_config()
    assert proxy.stem_stride == 1
    for size in (64, 128, 224, 320):
        target = family.to_target(proxy, size)
        assert target.stem_stride == spaces.stem_stride_for(size)
        assert {k: v for k, v in vars(target).items() if k != "stem_stride"} == \
               {k: v for k, v in vars(proxy).items() if k != "stem_stride"}
        assert family.to_proxy(target, size) == proxy


def test_patch_larger_than_the_image_is_refused():
    family = spaces.get("convmixer")
    with pytest.raises(spaces.UserError, match="larger than the 16 px image"):
        family.build(ConvMixerConfig(64, 2, 28, 5), 10, 16)

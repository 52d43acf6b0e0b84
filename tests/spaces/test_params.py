"""The NAME=SPEC syntax, space overrides and define-by-run suggestion with a real Optuna."""

import optuna
import pytest

import spaces
from spaces.overrides import collect_overrides
from spaces.params import Choices, Range, parse_assignments

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _param(family, name):
    return next(p for p in spaces.get(family).params if p.name == name)


@pytest.mark.parametrize("spec, domain", [
    ("64", Choices((64,))),
    ("64..512", Range(64, 512, None)),
    ("64..512:32", Range(64, 512, 32)),
    ("64,128,256", Choices((64, 128, 256))),
    (96, Choices((96,))),
    ([64, "128"], Choices((64, 128))),
])
def test_spec_syntax(spec, domain):
    assert _param("convmixer", "h").with_spec(spec).domain == domain


def test_ranges_may_be_wider_than_the_default_but_not_beyond_a_valid_model():
    h = _param("convmixer", "h")
    assert h.with_spec("16..2048:16").domain == Range(16, 2048, 16)
    with pytest.raises(spaces.UserError, match="h=0 is out of range"):
        h.with_spec("0..64")


@pytest.mark.parametrize("family, item, message", [
    ("convmixer", "k=4", "k=4 is invalid: k must be odd"),
    ("convmixer", "k=2..6", "includes 2, but k must be odd"),
    ("convmixer", "p=64", "a patch larger than the 32 px image"),
    ("convmixer", "act=tanh", "choose from gelu, relu"),
    ("convmixer", "act=gelu..relu", "takes choices, not a range"),
    ("convmixer", "h=abc", "is not a valid int"),
    ("convmixer", "h=2.5", "is not a valid int"),
    ("convmixer", "d=8..2", "low end is above the high end"),
    ("convmixer", "d=2..8:0", "step must be positive"),
    ("convmixer", "d=2.5..8", "write a range of ints"),
    ("convmixer", "d=2..x", "write a range of ints"),
    ("convmixer", "width=64", "unknown parameter 'width' for family convmixer"),
    ("coatnet", "layout=TCTT", "S1 is always C and no C follows a T"),
    ("coatnet", "layout=CCTC", "not allowed"),
])
def test_bad_specs_are_one_clear_error(family, item, message):
    with pytest.raises(spaces.UserError, match=message):
        spaces.get(family).space(parse_assignments([item]))


def test_assignments_need_a_name_and_an_equals_sign():
    assert parse_assignments(["h=64", "d=2..8", "h=96"]) == {"h": "96", "d": "2..8"}
    with pytest.raises(spaces.UserError, match="write NAME=SPEC"):
        parse_assignments(["h64"])


def test_space_file_then_flags(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("h: 64..256:32\nd: [2, 4]\nact: relu\n")
    overrides = collect_overrides(["act=gelu"], str(path))
    space = spaces.get("convmixer").space(overrides)
    domains = {p.name: p.domain for p in space.params}
    assert domains["h"] == Range(64, 256, 32)
    assert domains["d"] == Choices((2, 4))
    assert domains["act"] == Choices(("gelu",))


@pytest.mark.parametrize("text, message", [
    ("- h\n- d\n", "expected a mapping"),
    ("h: [1, 2\n", "not a readable YAML file"),
])
def test_bad_space_files(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(spaces.UserError, match=message):
        collect_overrides([], str(path))
    with pytest.raises(spaces.UserError, match="no such file"):
        collect_overrides([], str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("name", ["convmixer", "convmlp", "coatnet"])
def test_optuna_samples_only_valid_configs_inside_the_default_space(name):
    family = spaces.get(name)
    seen = []

    def objective(trial):
        config = family.suggest(trial)
        family.check(config, 32)
        seen.append(config)
        # every searchable value was asked for under its own name, as a scalar
        assert set(trial.params) == {p.name for p in family.params}
        return 0.0

    optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).optimize(objective, 30)
    assert len(set(seen)) == 30
    for config in seen:
        assert all(p.admits(getattr(config, p.name)) for p in family.params)


def test_narrowed_space_samples_inside_the_overrides_and_skips_fixed_values():
    family = spaces.get("convmixer")
    space = family.space(parse_assignments(["h=64..96:32", "d=2..3", "p=4", "k=3,5"]))
    configs = []

    def objective(trial):
        configs.append(space.suggest(trial))
        assert "p" not in trial.params  # fixed values are not asked for
        return 0.0

    optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).optimize(objective, 40)
    assert {c.h for c in configs} == {64, 96}
    assert {c.d for c in configs} == {2, 3}
    assert {c.p for c in configs} == {4}
    assert {c.k for c in configs} == {3, 5}
    assert {c.act for c in configs} <= {"gelu", "relu"}


def test_prefix_keeps_families_apart_in_one_trial():
    trial = optuna.trial.FixedTrial({"convmixer.h": 128, "convmixer.d": 4, "convmixer.p": 2,
                                     "convmixer.k": 7, "convmixer.act": "relu"})
    config = spaces.get("convmixer").suggest(trial, prefix="convmixer.")
    assert config == spaces.ConvMixerConfig(128, 4, 2, 7, "relu")


def test_show_needs_single_values():
    with pytest.raises(spaces.UserError, match="d=2..8 is a range"):
        spaces.get("convmixer").space({"d": "2..8"}).fixed_config()

"""Study creation, resume checks and bad input, on real Optuna SQLite storage."""

import optuna
import pytest

from search.study.record import trial_budget
from search.study.spec import StudySpec, build_spec
from search.study.storage import open_storage, redact
from search.study.studies import create_or_resume, load_spec, load_study
from spaces.errors import UserError
from tests.helpers import TINY


def spec(name="s", **changes):
    return build_spec(name, {**TINY, **changes}, None, "/data")


def test_spec_round_trips_through_the_storage(tmp_path):
    url = f"sqlite:///{tmp_path}/o.db"
    s = spec(max_params=1e6)
    study = create_or_resume(s, url, 5)
    again = load_spec(load_study("s", url))
    assert again == s
    assert again.sampler == "nsga2" and again.pruner == "moasha"  # several objectives
    assert trial_budget(study) == 5
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]


def test_single_objective_defaults_to_tpe_and_hyperband():
    s = spec(objectives="val_acc:max")
    assert (s.sampler, s.pruner) == ("tpe", "hyperband")


def test_resume_with_another_space_is_refused_and_nothing_changes(tmp_path):
    url = f"sqlite:///{tmp_path}/o.db"
    create_or_resume(spec(), url, 5)
    other = spec(overrides={"h": "16..64:16", "d": "1..2", "p": "4", "k": "3"})
    with pytest.raises(UserError, match="exists with a different space"):
        create_or_resume(other, url, 9)
    assert trial_budget(load_study("s", url)) == 5
    with pytest.raises(UserError, match="different epochs"):
        create_or_resume(spec(epochs=3), url, 5)


def test_resume_grows_the_budget_and_warns_about_other_data(tmp_path):
    url = f"sqlite:///{tmp_path}/o.db"
    create_or_resume(spec(), url, 5)
    warnings = []
    from dataclasses import replace
    study = create_or_resume(replace(spec(), data_hash="other"), url, 8, log=warnings.append)
    assert trial_budget(study) == 8
    assert any("other data" in w for w in warnings)
    assert trial_budget(create_or_resume(spec(), url, None)) == 8


def test_rank_by_is_stored_with_the_study_and_a_resume_may_change_it(tmp_path):
    url = f"sqlite:///{tmp_path}/o.db"
    assert spec().rank_by == "tse"  # the default
    old = {k: v for k, v in spec().to_dict().items() if k != "rank_by"}
    assert StudySpec.from_dict(old).rank_by == "last"  # stored before the choice: as it ran
    create_or_resume(spec(rank_by="tse"), url, 5)
    stored = load_spec(load_study("s", url))
    assert stored.rank_by == "tse"
    # given again without it, the stored one holds; given anew, the new one
    assert build_spec("s", dict(TINY), stored, "/data").rank_by == "tse"
    create_or_resume(build_spec("s", {**TINY, "rank_by": "powerlaw", "pruner": "none"},
                                stored, "/data"), url, 5)
    resumed = load_spec(load_study("s", url))  # what the workers read
    assert (resumed.rank_by, resumed.pruner) == ("powerlaw", "none")


@pytest.mark.parametrize("changes, message", [
    ({"objectives": "accuracy:max"}, "unknown objective"),
    ({"objectives": "val_acc:max,params:min", "pruner": "hyperband"}, "one objective only"),
    ({"family": "resnet"}, "unknown family"),
    ({"overrides": {"depth": "2"}}, "unknown parameter"),
    ({"epochs": 0}, "must be >= 1"),
    ({"recipe": {"momentum": 0.9}}, "recipe: unknown key 'momentum'"),
    ({"rank_by": "luck"}, "unknown --rank-by 'luck'; choose from last, best, tse"),
])
def test_bad_settings_are_one_clear_error(changes, message):
    with pytest.raises(UserError, match=message):
        spec(**changes)


def test_impossible_constraint_is_refused_before_anything_is_stored(tmp_path):
    url = f"sqlite:///{tmp_path}/o.db"
    with pytest.raises(UserError, match="impossible constraint.*smallest model"):
        create_or_resume(spec(max_params=10), url, 5)
    assert optuna.get_all_study_summaries(open_storage(url, heartbeat=False)) == []


def test_unreachable_storage_is_one_line_without_the_password():
    url = "postgresql+psycopg://alice:s3cret@127.0.0.1:9/nowhere"
    with pytest.raises(UserError) as err:
        open_storage(url)
    text = str(err.value)
    assert "cannot open the study storage" in text and "s3cret" not in text
    assert "\n" not in text
    assert redact(url) == "postgresql+psycopg://alice:***@127.0.0.1:9/nowhere"


def test_several_families_make_a_conditional_space():
    s = spec(family="convmixer,coatnet", overrides={"convmixer.h": "16..32:16", "L3": "1"})
    assert s.space.overrides == {"convmixer": {"h": "16..32:16"}, "coatnet": {"L3": "1"}}
    study = optuna.create_study(directions=["maximize", "minimize"])
    families = set()
    for _ in range(12):
        trial = study.ask()
        family, config = s.space.suggest(trial)
        families.add(family.name)
        assert trial.params["family"] == family.name
        assert all(k == "family" or k.startswith(family.name + ".") for k in trial.params)
        study.tell(trial, [0.5, 1.0])
    assert families == {"convmixer", "coatnet"}


def test_seed_presets_enqueue_the_paper_models_that_lie_in_the_space(tmp_path):
    url = f"sqlite:///{tmp_path}/o.db"
    s = build_spec("warm", {"family": "convmixer"}, None, "/data")
    study = create_or_resume(s, url, 10, seed_presets=True)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["preset"] for t in waiting) == [
        "convmixer-1024-20", "convmixer-1536-20", "convmixer-256-8", "convmixer-768-32"]
    cifar = next(t for t in waiting if t.user_attrs["preset"] == "convmixer-256-8")
    assert cifar.system_attrs["fixed_params"] == {"h": 256, "d": 8, "p": 2, "k": 5,
                                                  "act": "gelu"}
    trial = study.ask()  # the queue comes first, and suggests exactly the preset's proxy
    family, config = s.space.suggest(trial)
    preset = family.presets[trial.user_attrs["preset"]]
    assert config == family.to_proxy(preset.config, preset.image_size)


def test_device_flags_are_checked_before_anything_runs():
    import torch

    from search.backends.base import RunOptions
    from search.backends.local import worker_slots

    if torch.cuda.is_available():
        pytest.skip("the refusals below are about a machine without CUDA")
    with pytest.raises(UserError, match="visible CUDA device"):
        worker_slots(RunOptions(gpus=[0]))
    with pytest.raises(UserError, match="contradict"):
        worker_slots(RunOptions(gpus=[0], device="cpu"))
    with pytest.raises(UserError, match="--device cuda"):
        worker_slots(RunOptions(device="cuda"))
    slots = worker_slots(RunOptions(workers=2))
    assert [s["device"] for s in slots] == ["cpu", "cpu"]
    assert all(int(s["PATCHNAS_THREADS"]) >= 1 for s in slots)

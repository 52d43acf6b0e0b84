"""The study's sampler, one stream per worker."""

from __future__ import annotations

import optuna

from search.backends.runner import trial_seed
from search.study.spec import StudySpec


def run_stream(study: optuna.Study) -> int:
    """The stream of a worker starting now: the trials the study has asked so far (0 for a
    new study, so a first run is reproducible from its seed)."""
    asked = [s for s in optuna.trial.TrialState if s != optuna.trial.TrialState.WAITING]
    return len(study.get_trials(deepcopy=False, states=tuple(asked)))


def make_sampler(spec: StudySpec, worker_index: int,
                 stream: int = 0) -> optuna.samplers.BaseSampler:
    """Each worker gets its own stream, or parallel workers would propose the same configs;
    `stream` (the trials the study had when the worker started) gives each start its own,
    or a resumed study would replay the configs of its first run."""
    seed = trial_seed(spec.seed, 7919 * (worker_index + 1) + 104_729 * stream)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True,
                                          n_startup_trials=8)
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    return optuna.samplers.RandomSampler(seed=seed)

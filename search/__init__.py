"""Who decides what to train next: studies, their backends, promotion, and the CLI.

    search/cli/       the `patchnas` command: one module per command group
    search/promote/   from a study's front to full training: select, export, confirm,
                      fidelity, launch, the full run
    search/backends/  who runs the trials: the trial runner, the worker loop, pruners,
                      samplers, local worker processes, Ray Tune
    search/study/     the stored study: spec, space, objectives, settings, storage, the
                      trial record, results

Imports point down that list, never up. Importing a package runs nothing.
"""

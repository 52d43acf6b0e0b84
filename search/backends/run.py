"""`patchnas search run`: create or resume a study, run it on the chosen backend with one
progress/review loop, and return its Pareto front.

The driver creates the databases and decodes the data once, before any worker starts; every
check that can refuse the command runs before the study is created or changed.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from search.backends import get_backend
from search.backends.base import RunOptions, SearchJob
from search.backends.review import Progress
from search.study import record
from search.study.reach import check_tracking
from search.study.results import pareto, status
from search.study.settings import TRACKING_OFF, storage_url, tracking_uri
from search.study.spec import StudySpec, build_spec
from search.study.storage import redact
from search.study.studies import create_or_resume, find_spec
from search.study.workspace import load_splits, resolve_data, workspace_dir
from spaces.errors import UserError


def run_search(name: str, given: dict[str, Any], options: RunOptions, log=None) -> dict:
    """Create or resume study `name`, run its workers to the end, return its front."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    workspace = workspace_dir(options.workspace)
    url = storage_url(options.storage, workspace)
    stored = find_spec(name, url)
    data = str(resolve_data(options.data or (stored.data if stored else None), workspace,
                            download=False).resolve())
    spec = build_spec(name, given, stored, data)
    splits = load_splits(data, workspace, val_size=spec.val_size, subset=spec.subset,
                         seed=spec.seed)  # decodes into the cache once, for every worker
    spec = replace(spec, data_hash=splits.content_hash)
    check_proxy_size(spec, splits.image_size)
    backend = get_backend(options.backend)
    where = backend.check(name, options)  # refused before anything is stored
    uri = tracking_uri(options.tracking_uri, workspace, off=not options.tracking)
    if uri is not None:
        check_tracking(uri)
    study = create_or_resume(spec, url, options.trials, seed_presets=options.seed_presets,
                             log=log)
    runs = _start_tracking(spec, uri)
    log(f"study {name}: {record.trial_budget(study)} trials, {where}; storage {redact(url)}"
        + (f"; MLflow {redact(uri.split('?')[0])}" if runs else ""))
    options.env.update(PATCHNAS_TRACKING_URI=uri or TRACKING_OFF, PATCHNAS_SPAWNED="1")
    progress = Progress(study, runs, log if options.progress else None)
    code = backend.run(SearchJob(spec, study, url, workspace, data, options,
                                 progress.write if options.progress else log, progress.tick,
                                 uri))
    progress.finish("KILLED" if code == 130 else "FINISHED")
    if code == 130:
        raise KeyboardInterrupt
    return {"status": status(study).as_dict(), "front": pareto(study)}


def check_proxy_size(spec: StudySpec, data_size: int) -> None:
    """The proxy trains at the data's size or smaller, and every config of the space has a
    whole counterpart there (refused before anything is stored)."""
    size = spec.proxy_size or data_size
    if size > data_size:
        raise UserError(f"--proxy-size {size}: the data's images are {data_size} px; the "
                        f"proxy trains at that size or smaller, never upsampled")
    spec.space.check_at(size)


def _start_tracking(spec: StudySpec, uri: str | None):
    """The study's MLflow runs (created here, before any worker starts), or None."""
    if uri is None:
        return None
    from tracking.runs import StudyRuns

    runs = StudyRuns(uri, spec.name)
    params = {k: v for k, v in spec.to_dict().items() if k not in ("name", "data")}
    # rank_by is also a tag: a resume may change it, and an MLflow param is written once
    runs.start_study(params, {"study": spec.name, "data": spec.data, "rank_by": spec.rank_by})
    return runs

"""The stored study: what defines it (spec, space, objectives), how its settings resolve,
where it lives (storage, workspace), what a trial records (record) and what can be read
from it (results). Knows nothing of the backends, promotion or the CLI."""

"""Files of a run directory: atomic JSON writes and the config a workdir belongs to.

Every training writes its markers (``done.json``, ``result.json``, ``config.json``)
through :func:`write_json`, so a killed process never leaves a half-written marker
that says "done"; and claims its workdir with :func:`claim_workdir`, so a rerun with
another config does not resume (and mix) a training it is not.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from jaxthyroid.config import ConfigError
from jaxthyroid.report import json_default


def write_json(path: str | pathlib.Path, obj: Any, *, indent: int = 2) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (a temporary file, then a rename);
    numpy/JAX values and paths are converted (:func:`jaxthyroid.report.json_default`)."""
    from jaxthyroid import parallel

    if not parallel.is_primary():  # multi-host: process 0 writes the run's files
        return
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=json_default))
    os.replace(tmp, path)


def as_json(obj: Any) -> Any:
    """``obj`` (a ConfigDict, dict, ...) as it reads back from JSON (tuples -> lists)."""
    return json.loads(json.dumps(obj, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like trees differ (sorted)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return sorted(k for key in set(a) | set(b) for k in differing_keys(a.get(key), b.get(key), f"{prefix}{key}."))
    return [] if a == b else [prefix.rstrip(".")]


def claim_workdir(
    workdir: str | pathlib.Path, config: Any, *, ignore: tuple[str, ...] = ("workdir",), what: str = "a run"
) -> None:
    """Writes ``<workdir>/config.json``; raises :class:`ConfigError` when the workdir
    already holds a run of another config (resuming it would mix two trainings).

    ``config``: a ConfigDict or JSON-able dict; top-level keys in ``ignore`` are not
    compared (a run may move). The error names the differing keys.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    wanted = as_json(config)
    path = workdir / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        keep = lambda d: {k: v for k, v in d.items() if k not in ignore} if isinstance(d, dict) else d  # noqa: E731
        diff = differing_keys(keep(old), keep(wanted))
        if diff:
            raise ConfigError(
                f"{workdir} holds {what} with another config (differs in {', '.join(diff[:6])}"
                f"{' and more' if len(diff) > 6 else ''}); use another workdir or delete it"
            )
        return
    write_json(path, wanted)

"""Training logs: ``metrics.jsonl``, TensorBoard (tensorboardX) and a tqdm bar.

One JSON line per event: ``{"event": "train"|"eval", "step", "epoch", "phase", ...}``
with scalar metrics. Only process 0 writes (multi-host runs log once).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import sys
from typing import Any

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"

log = logging.getLogger(__name__)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic, np.ndarray, jax.Array)):
        v = np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v).tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them readable
    return v


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """All events of ``<workdir>/metrics.jsonl`` (empty when there is none)."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch.

    tensorboardX imports torch whenever it is installed (7+ s on 2 CPU cores) only to
    accept torch tensors; we log Python floats, so torch is hidden while it loads.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsLogger:
    """Appends events to ``metrics.jsonl`` and TensorBoard scalars under ``<workdir>/tb``."""

    def __init__(
        self,
        workdir: str | pathlib.Path,
        *,
        phase: str | None = None,
        enabled: bool | None = None,
        tensorboard: bool = True,
    ):
        self.workdir = pathlib.Path(workdir)
        self.phase = phase
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._writer = None
        if self.enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:  # imported here: only process 0 needs it, and some machines lack it
                    SummaryWriter = _summary_writer_class()
                except ImportError:
                    log.warning("tensorboardX is not installed: no TensorBoard events (metrics.jsonl only)")
                else:
                    self._writer = SummaryWriter(str(self.workdir / "tb"))

    @property
    def path(self) -> pathlib.Path:
        return self.workdir / METRICS_FILE

    def truncate_after(self, step: int) -> None:
        """Drops events after ``step`` (a resumed run re-logs them); atomic rewrite."""
        if not self.enabled or not self.path.exists():
            return
        kept = [e for e in read_metrics(self.workdir) if e.get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in kept))
        os.replace(tmp, self.path)

    def write(self, event: str, *, step: int, epoch: int, **scalars: Any) -> dict:
        record = {"event": event, "step": int(step), "epoch": int(epoch), "phase": self.phase}
        record.update({k: _jsonable(v) for k, v in scalars.items()})
        if not self.enabled:
            return record
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            prefix = f"{self.phase}/" if self.phase else ""
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    self._writer.add_scalar(f"{prefix}{event}/{k}", v, int(step))
            self._writer.flush()
        return record

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _NoBar:
    """Stands in for tqdm where it is not installed."""

    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def progress_bar(total: int | None, *, desc: str, initial: int = 0, **kwargs):
    """A tqdm bar on process 0 (disabled elsewhere and when ``JAXTHYROID_NO_TQDM`` is set)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    disable = jax.process_index() != 0 or bool(os.environ.get("JAXTHYROID_NO_TQDM"))
    return tqdm(total=total, desc=desc, initial=initial, disable=disable, dynamic_ncols=True, leave=False, **kwargs)

"""Tables (Markdown) and figures (matplotlib)."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")  # files only; no display on the training machines
  import matplotlib.pyplot as plt
  return plt


def _format_cell(value, precision: int) -> str:
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    return "—" if math.isnan(value) else f"{float(value):.{precision}f}"
  return "" if value is None else str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], *,
                   precision: int = 4) -> str:
  """A GitHub Markdown table: one row per dict, cells in ``columns`` order.

  Floats get ``precision`` decimals, NaN shows as ``—``, a missing key as empty.
  """
  header = "| " + " | ".join(columns) + " |"
  rule = "|" + "|".join("---" for _ in columns) + "|"
  body = ["| " + " | ".join(_format_cell(r.get(c), precision) for c in columns) + " |"
          for r in rows]
  return "\n".join([header, rule, *body]) + "\n"


def plot_curves(histories: Mapping[str, Sequence[Mapping]], path: str | pathlib.Path, *,
                accuracy_key: str = "val_exact_match", loss_key: str = "val_loss") -> None:
  """Validation accuracy and loss per epoch, phases one after another (the paper's curves).

  ``histories`` maps a phase name to its per-epoch dicts (``fit``'s history); the
  epochs of later phases continue the x axis and a dashed line marks each phase
  boundary. Writes a PNG to ``path``.
  """
  plt = _pyplot()
  fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
  offset = 0
  for i, (phase, history) in enumerate(histories.items()):
    if not history:
      continue
    epochs = offset + np.arange(1, len(history) + 1)
    acc = [h.get(accuracy_key, np.nan) for h in history]
    loss = [h.get(loss_key, np.nan) for h in history]
    color = f"C{i}"
    ax_acc.plot(epochs, acc, color=color, label=phase)
    ax_loss.plot(epochs, loss, color=color, label=phase)
    if offset:
      for ax in (ax_acc, ax_loss):
        ax.axvline(offset + 0.5, color="grey", linestyle="--", linewidth=1)
    offset += len(history)
  ax_acc.set(xlabel="epoch", ylabel="validation accuracy (exact match)",
             title="Validation accuracy")
  ax_loss.set(xlabel="epoch", ylabel="validation loss", title="Validation loss")
  for ax in (ax_acc, ax_loss):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: str | pathlib.Path, *,
                   title: str = "Confusion matrix (finding sets)") -> None:
  """A confusion matrix ``[true, predicted]`` as a heat map with counts.

  ``labels`` names the rows; the columns use the same names, plus ``other`` when
  the matrix has one column more (:func:`jaxthyroid.metrics.confusion_matrix`).
  Writes a PNG to ``path``.
  """
  plt = _pyplot()
  cm = np.asarray(cm)
  rows = list(labels)
  cols = rows + ["other"] if cm.shape[1] == len(rows) + 1 else list(labels)
  if cm.shape != (len(rows), len(cols)):
    raise ValueError(f"confusion matrix {cm.shape} does not fit {len(rows)} labels")
  size = max(4.0, 0.6 * len(cols) + 2.0)
  fig, ax = plt.subplots(figsize=(size + 1.0, size))
  # Colour by row fraction (recall per finding set), annotate with counts.
  frac = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
  for i in range(cm.shape[0]):
    for j in range(cm.shape[1]):
      ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
              color="white" if frac[i, j] > 0.5 else "black")
  ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
  ax.set_yticks(range(len(rows)), rows, fontsize=8)
  ax.set(xlabel="predicted", ylabel="true", title=title)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of row")
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)

"""Tables (Markdown) and figures (matplotlib)."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np


def json_default(x):
    """``json.dumps(..., default=json_default)`` for results: numpy/JAX scalars and
    arrays become numbers and lists, paths strings; anything else is an error."""
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        return np.asarray(x).tolist()
    if isinstance(x, pathlib.Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


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


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], *, precision: int = 4) -> str:
    """A GitHub Markdown table: one row per dict, cells in ``columns`` order.

    Floats get ``precision`` decimals, NaN shows as ``—``, a missing key as empty.
    """
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_format_cell(r.get(c), precision) for c in columns) + " |" for r in rows]
    return "\n".join([header, rule, *body]) + "\n"


def plot_curves(
    histories: Mapping[str, Sequence[Mapping]],
    path: str | pathlib.Path,
    *,
    accuracy_key: str = "val_exact_match",
    loss_key: str = "val_loss",
) -> None:
    """Validation accuracy and loss against optimiser steps, phases one after another
    (the paper's curves).

    ``histories`` maps a phase name to its per-evaluation dicts (``fit``'s history, each
    with the ``step`` it followed; without one, evaluations count 1, 2, ...); later
    phases continue the x axis and a dashed line marks each phase boundary. Writes a
    PNG to ``path``.
    """
    plt = _pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for i, (phase, history) in enumerate(histories.items()):
        if not history:
            continue
        steps = offset + np.asarray([h.get("step", n + 1) for n, h in enumerate(history)])
        acc = [h.get(accuracy_key, np.nan) for h in history]
        loss = [h.get(loss_key, np.nan) for h in history]
        color = f"C{i}"
        ax_acc.plot(steps, acc, color=color, marker=".", label=phase)
        ax_loss.plot(steps, loss, color=color, marker=".", label=phase)
        if offset:
            for ax in (ax_acc, ax_loss):
                ax.axvline(offset, color="grey", linestyle="--", linewidth=1)
        offset = int(steps[-1])
    ax_acc.set(xlabel="optimiser step", ylabel="validation accuracy (exact match)", title="Validation accuracy")
    ax_loss.set(xlabel="optimiser step", ylabel="validation loss", title="Validation loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(
    cm: np.ndarray, labels: Sequence[str], path: str | pathlib.Path, *, title: str = "Confusion matrix (finding sets)"
) -> None:
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
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if frac[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of row")
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def contact_sheet(
    images_by_set: Mapping[str, Sequence[np.ndarray]],
    path: str | pathlib.Path,
    *,
    per_row: int = 6,
    cmap: str = "gray_r",
    max_bytes: int = 200_000,
) -> None:
    """Scintigrams in a grid: one row per finding set, labelled with its name.

    ``images_by_set`` maps a finding-set name to images ``[H, W]`` (or ``[H, W, 1]``)
    of counts; the first ``per_row`` of each are shown, each scaled to its own 99.5th
    percentile (a scintigram's usual display window), black = high counts. Written as
    a palette PNG, the dpi lowered until the file is at most ``max_bytes``.
    """
    import io

    from PIL import Image

    plt = _pyplot()
    names = [n for n, imgs in images_by_set.items() if len(imgs)]
    if not names:
        raise ValueError("contact_sheet: no images given")
    rows, cols = len(names), max(1, per_row)
    cell = 1.1
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell + 1.6, rows * cell), squeeze=False)
    for r, name in enumerate(names):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            imgs = images_by_set[name]
            if c < len(imgs):
                img = np.asarray(imgs[c], np.float32)
                img = img[..., 0] if img.ndim == 3 else img
                top = max(float(np.percentile(img, 99.5)), 1e-6)
                ax.imshow(np.clip(img / top, 0.0, 1.0), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="antialiased")
        axes[r, 0].set_ylabel(name.replace("+", "+\n"), rotation=0, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(left=1.5 / (cols * cell + 1.6), right=0.995, top=0.995, bottom=0.005, wspace=0.04, hspace=0.04)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        dpi = 90.0
        for _ in range(4):
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi)
            buf.seek(0)
            # A 64-colour palette PNG is ~3x smaller than matplotlib's RGBA and looks the same
            # for a grey colormap.
            with Image.open(buf) as im:
                small = io.BytesIO()
                im.convert("RGB").quantize(colors=64).save(small, format="PNG", optimize=True)
            if small.tell() <= max_bytes:
                break
            dpi *= 0.92 * math.sqrt(max_bytes / small.tell())  # bytes grow ~ with dpi²
        path.write_bytes(small.getvalue())
    finally:
        plt.close(fig)


def sr_comparison(
    rows: Sequence[Mapping[str, np.ndarray]],
    path: str | pathlib.Path,
    *,
    cmap: str = "gray_r",
    title: str | None = None,
) -> None:
    """Super-resolution side by side: one row per test image, one column per method.

    ``rows``: per image, an ordered mapping from a column name (``"LR"``, ``"bicubic"``,
    ``"SRResNet"``, ``"SRGAN"``, ``"HR"``…) to an image ``[H, W]`` or ``[H, W, 1]`` in
    [0, 1] (an LR image is shown at its own size, stretched to the cell). Every image
    uses the same [0, 1] window, so intensities are comparable across a row; black =
    high counts, as in :func:`contact_sheet`. Optional per-cell captions: a key
    ``"<column>:caption"`` holding a string (e.g. the PSNR) is written under that cell.
    """
    plt = _pyplot()
    if not rows:
        raise ValueError("sr_comparison: no rows given")
    columns = [k for k in rows[0] if not k.endswith(":caption")]
    cell = 1.5
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(len(columns) * cell, len(rows) * cell + 0.3), squeeze=False
    )
    for r, row in enumerate(rows):
        for c, name in enumerate(columns):
            ax = axes[r, c]
            img = np.asarray(row[name], np.float32)
            img = img[..., 0] if img.ndim == 3 else img
            ax.imshow(np.clip(img, 0.0, 1.0), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            caption = row.get(f"{name}:caption")
            if caption:
                ax.set_xlabel(caption, fontsize=7)
            if r == 0:
                ax.set_title(f"{name}\n{img.shape[0]}×{img.shape[1]}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

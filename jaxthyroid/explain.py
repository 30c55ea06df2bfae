"""Explanations of a classifier's findings, and how well they point at the lesion.

Two heat-map methods, each giving ``[batch, F, H, W]`` maps in [0, 1] (one per finding,
each scaled by its own maximum):

* **Grad-CAM** (Selvaraju et al. 2017) on the output ``A`` ``[h, w, C]`` of the ResNet's
  last block (plain or cross-residual):

      alpha_c^f = mean_{i,j} d logit_f / d A_ijc,     cam^f = ReLU(sum_c alpha_c^f A_c),

  upsampled bilinearly to the image. ``A`` comes from Flax's intermediate capture
  (``capture_intermediates``); its gradient from a zero ``delta`` added to the block's
  output by a method interceptor (``nn.intercept_methods``), so ``d logit / d delta =
  d logit / d A`` without touching the model code. One forward and one backward per
  finding (a ``vmap`` over the cotangents), jitted.
* **Occlusion** (Zeiler & Fergus 2014): the drop of each finding's probability when a
  square patch of the image is set to 0 (no counts), averaged over the patches covering
  each pixel; a rise counts as 0.

Localisation is measured against the phantom's truth (it knows where every nodule
is): :func:`pointing_game` (the map's maximum inside the lesion mask) and :func:`iou`
(map thresholded at a fraction of its maximum vs. the mask), each beside a random-map
baseline of the same smoothness (:func:`random_maps`). :func:`localisation_report`
runs both on fresh phantom images for a finished run; ``reproduce`` can call it.

Size (over ~400 lines, on purpose): heat maps (Grad-CAM, occlusion), their figure, and
the localisation scores against the phantom's lesion masks share the same compiled
Grad-CAM and batching helpers; the localisation half is the next candidate to move out
(``jaxthyroid.localisation``) if it grows.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxthyroid import xla_options

METHODS = ("gradcam", "occlusion")
# Findings whose lesion is the nodule; the diffuse ones are scored against the gland.
NODULE_FINDINGS = ("hot_nodule", "cold_nodule")
DIFFUSE_FINDINGS = ("graves", "hashimoto", "subacute_thyroiditis")
# A localisation set must not repeat the run's own images: its phantom seed is offset.
LOCALISATION_SEED_OFFSET = 7_919


class ExplainError(ValueError):
    """A request the model or run cannot answer (unknown block, method or finding)."""


# ----------------------------------------------------------------------------- heat maps
def _check_block(variables, block: str | None) -> str:
    """``block``, or the last one when None; a clear error for a name the model lacks."""
    if block is None:
        return last_block(variables)
    if block not in variables["params"]:
        blocks = [n for n in variables["params"] if n.startswith("stage")]
        raise ExplainError(f"no block {block!r} in this model; its blocks: {', '.join(blocks)}")
    return block


def last_block(variables) -> str:
    """Name of the ResNet's last block (``stage4_block2`` for ResNet-18), from its params."""
    names = [n for n in variables["params"] if n.startswith("stage") and "_block" in n]
    if not names:
        raise ExplainError("Grad-CAM needs a ResNet (params named stage<i>_block<j>); use --method occlusion")

    def order(name):
        stage, block = name[len("stage") :].split("_block")
        return int(stage), int(block)

    return max(names, key=order)


def normalise_maps(maps: jax.Array) -> jax.Array:
    """Each ``[..., H, W]`` map divided by its maximum (an all-zero map stays 0)."""
    peak = jnp.max(maps, axis=(-2, -1), keepdims=True)
    return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0)


def make_gradcam(model: nn.Module, block: str):
    """Jitted ``(variables, images [B, H, W, C]) -> (maps [B, F, H, W] in [0, 1], logits [B, F])``
    of Grad-CAM on the output of module ``block`` (e.g. :func:`last_block`)."""
    fn = _gradcam_fn(model, (block,))

    def gradcam(variables, images):
        (maps,), logits = fn(variables, images)
        return maps, logits

    return xla_options.jit(gradcam)


def make_gradcam_blocks(model: nn.Module, blocks: Sequence[str]):
    """Jitted ``(variables, images) -> ((maps [B, F, H, W] per block), logits [B, F])``:
    Grad-CAM on several blocks from one forward and one backward pass per finding."""
    return xla_options.jit(_gradcam_fn(model, tuple(blocks)))


def _gradcam_fn(model: nn.Module, blocks: tuple[str, ...]):
    paths = {(b,) for b in blocks}

    def captured(module, method_name):
        return method_name == "__call__" and module.path in paths

    def gradcam(variables, images):
        def forward(deltas):
            def add_delta(next_fun, args, kwargs, context):
                out = next_fun(*args, **kwargs)
                if context.method_name == "__call__" and context.module.path in paths:
                    out = out + deltas[context.module.path[0]].astype(out.dtype)
                return out

            with nn.intercept_methods(add_delta):
                logits, state = model.apply(
                    variables, images, train=False, capture_intermediates=captured, mutable=["intermediates"]
                )
            activations = {b: state["intermediates"][b]["__call__"][0].astype(jnp.float32) for b in blocks}
            return logits.astype(jnp.float32), activations

        shapes = jax.eval_shape(forward, {b: jnp.zeros((), jnp.float32) for b in blocks})[1]
        deltas = {b: jnp.zeros(shapes[b].shape, jnp.float32) for b in blocks}
        logits, vjp, activations = jax.vjp(forward, deltas, has_aux=True)
        num_findings = logits.shape[-1]
        # Row f of eye(F) for every image: image b's logit f depends on image b only
        # (BatchNorm uses running statistics), so one pass gives every image's gradient.
        cotangents = jnp.broadcast_to(jnp.eye(num_findings)[:, None, :], (num_findings, *logits.shape))
        (grads,) = jax.vmap(vjp)(cotangents)  # {block: [F, B, h, w, C]}
        b, h, w = images.shape[:3]
        maps = []
        for block in blocks:
            weights = grads[block].mean(axis=(2, 3))  # alpha: [F, B, C]
            cams = jax.nn.relu(jnp.einsum("fbc,bhwc->bfhw", weights, activations[block]))
            maps.append(normalise_maps(jax.image.resize(cams, (b, num_findings, h, w), "bilinear")))
        return tuple(maps), logits

    return gradcam


def gradcam(model: nn.Module, variables, images, *, block: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps ``[B, F, H, W]`` and logits ``[B, F]`` for ``images`` ``[B, H, W, C]``."""
    maps, logits = make_gradcam(model, block or last_block(variables))(variables, jnp.asarray(images))
    return np.asarray(maps), np.asarray(logits)


def occlusion_geometry(size: int) -> tuple[int, int]:
    """``(patch, stride)`` in pixels for an image side of ``size``: 1/8 of it, half-overlapping."""
    patch = max(size // 8, 2)
    return patch, max(patch // 2, 1)


def occlusion(
    model: nn.Module, variables, images, *, patch: int | None = None, stride: int | None = None, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Occlusion maps ``[B, F, H, W]`` (in [0, 1]) and logits ``[B, F]`` for ``images`` ``[B, H, W, C]``.

    Each ``patch``² window (every ``stride`` pixels) is set to 0 in turn; a pixel's
    value is the mean drop of the finding's sigmoid probability over the windows that
    cover it (rises count as 0). ``B * positions`` forward passes, ``batch_size`` at a time.
    """
    images = np.asarray(images, np.float32)
    n, h, w, _ = images.shape
    default_patch, default_stride = occlusion_geometry(min(h, w))
    patch, stride = patch or default_patch, stride or default_stride
    apply = _logits_fn(model)
    tops = range(0, h - patch + 1, stride)
    lefts = range(0, w - patch + 1, stride)
    positions = [(i, j) for i in tops for j in lefts]
    logits = _batched(apply, variables, images, batch_size)
    base = jax.nn.sigmoid(logits)
    maps = np.zeros((n, logits.shape[-1], h, w), np.float32)
    cover = np.zeros((h, w), np.float32)
    for i, j in positions:
        cover[i : i + patch, j : j + patch] += 1
    for b in range(n):
        occluded = np.repeat(images[b : b + 1], len(positions), axis=0)
        for k, (i, j) in enumerate(positions):
            occluded[k, i : i + patch, j : j + patch] = 0.0
        drops = base[b] - jax.nn.sigmoid(_batched(apply, variables, occluded, batch_size))  # [P, F]
        for k, (i, j) in enumerate(positions):
            maps[b, :, i : i + patch, j : j + patch] += np.asarray(drops[k])[:, None, None]
    maps = np.maximum(maps / np.maximum(cover, 1.0), 0.0)
    return np.asarray(normalise_maps(jnp.asarray(maps))), logits


def _logits_fn(model):
    return xla_options.jit(lambda variables, x: model.apply(variables, x, train=False).astype(jnp.float32))


def _batched(fn, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn(variables, chunk)`` over ``batch_size`` chunks, the last one padded (one compile)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pad = batch_size - len(chunk) if len(images) > batch_size else 0
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        keep = len(chunk) - pad
        result = jax.tree.map(np.asarray, fn(variables, jnp.asarray(chunk)))
        out.append(jax.tree.map(lambda r, keep=keep: r[:keep], result))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *out)


def heat_maps(
    method: str, model, variables, images, *, batch_size: int = 32, block: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(maps [B, F, H, W], logits [B, F])`` by ``method`` (``gradcam`` | ``occlusion``);
    Grad-CAM on ``block`` (default :func:`last_block`)."""
    if method == "gradcam":
        fn = make_gradcam(model, _check_block(variables, block))
        return _batched(fn, variables, np.asarray(images, np.float32), batch_size)
    if method == "occlusion":
        return occlusion(model, variables, images, batch_size=max(batch_size, 64))
    raise ExplainError(f"method must be one of {', '.join(METHODS)}, not {method!r}")


# ----------------------------------------------------------------------------- localisation
def pointing_game(maps, masks) -> np.ndarray:
    """Hits ``[N]`` (bool): the maximum of each map ``[N, H, W]`` lies inside its mask ``[N, H, W]``.

    The maximum's location is the centroid (rounded) of the pixels at the maximum: one
    pixel unless the map has a plateau there, as a coarse map upsampled bilinearly has
    at its clamped border (a 2×2 Grad-CAM's maximum is a whole corner block; taking its
    first pixel would always point at the image's edge). A flat map (max = min, e.g. an
    all-zero Grad-CAM) points nowhere and is a miss.
    """
    maps, masks = np.asarray(maps), np.asarray(masks) > 0.5
    n, h, w = maps.shape
    peak = maps.max(axis=(1, 2), keepdims=True)
    at_peak = maps >= peak
    rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    count = at_peak.sum(axis=(1, 2))
    row = np.rint((at_peak * rows).sum(axis=(1, 2)) / count).astype(int)
    col = np.rint((at_peak * cols).sum(axis=(1, 2)) / count).astype(int)
    inside = masks[np.arange(n), row, col]
    return inside & (peak[:, 0, 0] > maps.min(axis=(1, 2)))


def iou(maps, masks, threshold: float = 0.5) -> np.ndarray:
    """IoU ``[N]`` of ``maps >= threshold * max(map)`` with ``masks > 0.5`` (both ``[N, H, W]``).

    0 where the map is flat (nothing selected) or union is empty.
    """
    maps, masks = np.asarray(maps, np.float32), np.asarray(masks) > 0.5
    peak = maps.max(axis=(1, 2), keepdims=True)
    flat = peak[:, 0, 0] <= maps.min(axis=(1, 2))
    selected = (maps >= threshold * peak) & ~flat[:, None, None]
    inter = (selected & masks).sum(axis=(1, 2))
    union = (selected | masks).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def random_maps(seed: int, n: int, size: int, grid: int) -> np.ndarray:
    """``[n, size, size]`` uniform noise on a ``grid``² lattice, upsampled bilinearly: a
    baseline as smooth as a Grad-CAM of that grid (its pointing-game hit rate is about
    the mask's share of the image)."""
    coarse = jax.random.uniform(jax.random.key(seed), (n, grid, grid))
    return np.asarray(normalise_maps(jax.image.resize(coarse, (n, size, size), "bilinear")))


def phantom_lesions(finding: str, n: int, *, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` phantom images with ``finding`` alone: normalised images ``[n, size, size, 1]``
    (as the data pipeline feeds them) and lesion masks ``[n, size, size]`` (bool).

    The mask is the phantom's pre-blur nodule mask (> 0.5, inside the soft edge) for the
    nodule findings, and the gland's support for the diffuse ones.
    """
    from jaxthyroid import findings as findings_lib
    from jaxthyroid import phantom
    from jaxthyroid.data import transforms

    if finding not in NODULE_FINDINGS + DIFFUSE_FINDINGS:
        raise ExplainError(f"no lesion mask for {finding!r}: one of {', '.join(NODULE_FINDINGS + DIFFUSE_FINDINGS)}")
    set_id = findings_lib.DEFAULT.set_id((finding,))
    key_name = "nodule_mask" if finding in NODULE_FINDINGS else "thyroid_support"
    counts, masks = _render_with_aux(phantom.example_keys(seed, np.arange(n)), np.int32(set_id), size, key_name)
    images = transforms.normalize_counts(np.asarray(counts))
    masks = np.asarray(masks) > (0.5 if finding in NODULE_FINDINGS else 0.0)
    return images, masks


@functools.partial(jax.jit, static_argnums=(2, 3))
def _render_with_aux(keys, set_id, size: int, key_name: str):
    """Phantom counts ``[n, size, size, 1]`` and the aux map ``key_name`` ``[n, size, size]``
    (module level and ``set_id`` traced, so hot and cold nodules share one compilation)."""
    from jaxthyroid import phantom

    def one(key):
        counts, aux = phantom.render(key, set_id, size=size, return_aux=True)
        return counts, aux[key_name]

    return jax.vmap(one)(keys)


def localisation_scores(maps, masks, *, threshold: float = 0.5) -> dict[str, float]:
    """Pointing-game accuracy and mean IoU of maps ``[N, H, W]`` against masks ``[N, H, W]``."""
    return {
        "pointing_game": float(pointing_game(maps, masks).mean()),
        "iou": float(iou(maps, masks, threshold).mean()),
    }


def default_blocks(variables) -> tuple[str, ...]:
    """Grad-CAM blocks a localisation report scores: the last block, and the last block
    of the stage before (twice the resolution: at 64² with the torchvision stem the last
    block's map is 2×2, the one before 4×4)."""
    last = last_block(variables)
    stage = int(last[len("stage") :].split("_block")[0])
    earlier = [n for n in variables["params"] if n.startswith(f"stage{stage - 1}_block")]
    if not earlier:
        return (last,)
    return (last, max(earlier, key=lambda n: int(n.split("_block")[1])))


def localisation_report(
    run_dir,
    *,
    which: str = "phase2",
    findings: Sequence[str] = NODULE_FINDINGS,
    n_images: int = 64,
    method: str = "gradcam",
    blocks: Sequence[str] | None = None,
    threshold: float = 0.5,
    seed: int | None = None,
    batch_size: int = 32,
) -> dict:
    """How well a run's heat maps point at the phantom's lesions, beside a random map.

    For each finding, ``n_images`` fresh phantom images with that finding alone (phantom
    seed = the run's seed + :data:`LOCALISATION_SEED_OFFSET` unless given, so none is a
    training image) at the run's image size; each map of that finding's logit is scored
    against the lesion mask (:func:`phantom_lesions`), and so is a random map of the
    same grid (:func:`random_maps`). Maps: Grad-CAM on each of ``blocks`` (default
    :func:`default_blocks`), or occlusion.

    Returns ``{'which', 'seed', 'threshold', 'images', 'maps': {name: {'method', 'grid'
    (, 'block')}}, finding: {'detected' (share with p >= 0.5), 'mask_fraction', name:
    {'pointing_game', 'pointing_game_interval' (Wilson 95 %), 'iou', 'random':
    {'pointing_game', 'iou'}}}}``; a map's ``name`` is ``gradcam/<block>`` or ``occlusion``.
    """
    from jaxthyroid import cross_training
    from jaxthyroid.external import wilson_interval

    cfg, taxonomy, model, variables = cross_training.load_run(run_dir, which)
    size = int(cfg.data.size)
    seed = int(cfg.seed) + LOCALISATION_SEED_OFFSET if seed is None else seed
    out = {"which": which, "seed": seed, "threshold": threshold, "images": n_images, "maps": {}}
    if method == "gradcam":
        blocks = [_check_block(variables, b) for b in (blocks or default_blocks(variables))]
        fn = make_gradcam_blocks(model, blocks)  # every block from one backward pass
        for block in blocks:
            grid = _gradcam_grid(model, variables, block=block, size=size)
            out["maps"][f"gradcam/{block}"] = {"method": "gradcam", "block": block, "grid": grid}

        def maps_of(images):  # -> {name: maps [N, F, H, W]}, logits [N, F]
            maps, logits = _batched(fn, variables, images, batch_size)
            return dict(zip(out["maps"], maps)), logits
    elif method == "occlusion":
        patch, stride = occlusion_geometry(size)
        out["maps"]["occlusion"] = {"method": "occlusion", "grid": len(range(0, size - patch + 1, stride))}

        def maps_of(images):
            maps, logits = occlusion(model, variables, images, batch_size=max(batch_size, 64))
            return {"occlusion": maps}, logits
    else:
        raise ExplainError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    for k, finding in enumerate(findings):
        if finding not in taxonomy.findings:
            raise ExplainError(f"the run's findings ({', '.join(taxonomy.findings)}) do not include {finding!r}")
        f = taxonomy.findings.index(finding)
        images, masks = phantom_lesions(finding, n_images, size=size, seed=seed + k)
        maps, logits = maps_of(images)
        row = {"mask_fraction": float(masks.mean()), "detected": float((jax.nn.sigmoid(logits[:, f]) >= 0.5).mean())}
        for name, info in out["maps"].items():
            scores = localisation_scores(maps[name][:, f], masks, threshold=threshold)
            hits = int(round(scores["pointing_game"] * n_images))
            scores["pointing_game_interval"] = list(wilson_interval(hits, n_images))
            baseline = random_maps(seed + 1000 + k, n_images, size, info["grid"])
            scores["random"] = localisation_scores(baseline, masks, threshold=threshold)
            row[name] = scores
        out[finding] = row
    return out


def localisation_table(report: dict) -> list[dict]:
    """Rows ``{finding, map, grid, pointing game, 95 % interval, random map, above random,
    IoU, random IoU, mask share, detected}`` of a :func:`localisation_report` (for
    markdown tables); 'above random': the pointing game's interval starts above the
    random map's rate."""
    rows = []
    for finding, row in report.items():
        if not isinstance(row, dict) or "mask_fraction" not in row:
            continue
        for name, info in report["maps"].items():
            s = row[name]
            low, high = s["pointing_game_interval"]
            rows.append(
                {
                    "finding": finding,
                    "map": name,
                    "grid": f"{info['grid']}×{info['grid']}",
                    "pointing game": s["pointing_game"],
                    "95 % interval": f"{low:.2f}–{high:.2f}",
                    "random map": s["random"]["pointing_game"],
                    "above random": "yes" if low > s["random"]["pointing_game"] else "no",
                    "IoU": s["iou"],
                    "random IoU": s["random"]["iou"],
                    "mask share": row["mask_fraction"],
                    "detected": row["detected"],
                }
            )
    return rows


def _gradcam_grid(model, variables, *, block: str, size: int) -> int:
    """Side of the last block's output map for ``size``² inputs (shapes only)."""
    x = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(
            v,
            x,
            train=False,
            capture_intermediates=lambda m, name: name == "__call__" and m.path == (block,),
            mutable=["intermediates"],
        ),
        variables,
        x,
    )
    return int(state["intermediates"][block]["__call__"][0].shape[1])


# ----------------------------------------------------------------------------- files
def explain_files(
    run_dir, paths, out_dir, *, method: str = "gradcam", which: str = "phase2", block: str | None = None
) -> list[dict]:
    """One PNG per image file in ``out_dir`` (scintigram, heat map and overlay of each
    predicted finding, probabilities) and ``explain.json``; returns its rows
    ``{file, png, findings, probabilities}``."""
    from jaxthyroid import cross_training
    from jaxthyroid import findings as findings_lib
    from jaxthyroid.data import images as images_lib
    from jaxthyroid.data import transforms

    if method not in METHODS:
        raise ExplainError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: no such image file")
    cfg, taxonomy, model, variables = cross_training.load_run(run_dir, which)
    counts = np.stack([images_lib.load_image(p, cfg.data.size) for p in paths])  # uint16 [N, H, W, 1]
    x = transforms.normalize_counts(counts.astype(np.float32))
    maps, logits = heat_maps(method, model, variables, x, block=block)
    probs = np.asarray(jax.nn.sigmoid(logits))
    predicted = findings_lib.predict(probs, decision=cfg.decision, taxonomy=taxonomy)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    for i, p in enumerate(paths):
        stem = pathlib.Path(p).stem
        name = f"{stem}_{method}.png" if stem not in used else f"{stem}_{i}_{method}.png"
        used.add(stem)
        shown = [f for f, on in zip(taxonomy.findings, predicted[i]) if on]
        prob = {f: float(v) for f, v in zip(taxonomy.findings, probs[i])}
        figure(
            out / name,
            x[i, ..., 0],
            {f: maps[i, taxonomy.findings.index(f)] for f in shown},
            prob,
            title=f"{pathlib.Path(p).name} ({method}, {which})",
        )
        rows.append({"file": str(p), "png": str(out / name), "findings": shown, "probabilities": prob})
    (out / "explain.json").write_text(json.dumps({"run": str(run_dir), "method": method, "images": rows}, indent=2))
    return rows


def figure(path, image: np.ndarray, maps: dict[str, np.ndarray], probabilities: dict[str, float], *, title: str):
    """PNG: the scintigram ``[H, W]``, then per finding its heat map ``[H, W]`` and the
    overlay; the probabilities of every finding under the scintigram."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the training machines
    import matplotlib.pyplot as plt

    cols = 1 + 2 * len(maps)
    fig, axes = plt.subplots(1, cols, figsize=(2.6 * cols, 3.2), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("scintigram", fontsize=9)
    text = "\n".join(f"{f}: {p:.3f}" for f, p in probabilities.items())
    axes[0].text(0.0, -0.04, text, transform=axes[0].transAxes, va="top", fontsize=7, family="monospace")
    for k, (finding, heat) in enumerate(maps.items()):
        a, b = axes[1 + 2 * k], axes[2 + 2 * k]
        a.imshow(heat, cmap="jet", vmin=0, vmax=1)
        a.set_title(f"{finding} ({probabilities[finding]:.2f})", fontsize=9)
        b.imshow(image, cmap="gray", vmin=0, vmax=1)
        b.imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=0.45)
        b.set_title("overlay", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)

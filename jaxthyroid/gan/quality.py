"""How good the generated images are, judged by a classifier trained on real images only.

:func:`generation_quality` measures agreement with the conditioned finding set and
the Fréchet distance in the judge's feature space (with the real-vs-real floor);
:func:`quality_gate` turns them into a verdict. A judge means something only when it
is itself accurate on real images (DESIGN §7), so its accuracy goes beside every
number. The gate fails when agreement < half the judge's accuracy on real test
images, or the Fréchet distance > 10× the floor; ``reproduce`` and ``augment`` then
say so loudly and the report marks every GAN arm as run with failing images.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxthyroid import findings as findings_lib
from jaxthyroid import metrics as metrics_lib
from jaxthyroid import run_files, xla_options
from jaxthyroid.data import transforms
from jaxthyroid.gan import images as images_lib
from jaxthyroid.train.state import variables_of

VERDICT_FILE = "quality.json"
# The gate (issue 13): agreement at least this share of the judge's own accuracy, and
# the Fréchet distance at most this multiple of the real-vs-real floor.
MIN_AGREEMENT_SHARE = 0.5
MAX_FRECHET_RATIO = 10.0


@functools.lru_cache(maxsize=8)
def classifier_features_fn(model):
    """Jitted ``(variables, images [B, H, W, 1]) -> (logits [B, F], features [B, D])``.

    ``features`` are the penultimate activations: the input of the model's final
    Dense layer named ``head`` (the globally pooled last stage in our ResNets and
    baselines), captured with ``nn.intercept_methods``. A model without a ``head``
    submodule gets its logits as features (``feature_space`` in
    :func:`generation_quality` says which).
    """
    import flax.linen as nn

    def apply(variables, images):
        captured = {}

        def interceptor(next_fun, args, kwargs, context):
            if context.module.name == "head" and context.method_name == "__call__":
                captured["features"] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            logits = model.apply(variables, images, train=False)
        logits = logits.astype(jnp.float32)
        features = captured.get("features", logits)
        return logits, features.reshape(features.shape[0], -1).astype(jnp.float32)

    return xla_options.jit(apply)


def _feature_space(model, variables, sample: np.ndarray) -> str:
    """``'head_input'`` when the model has a ``head`` layer to capture, else ``'logits'``
    (traced abstractly, nothing computed)."""
    import flax.linen as nn

    seen = []

    def probe(variables, x):
        def interceptor(next_fun, args, kwargs, context):
            seen.append(context.module.name)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            return model.apply(variables, x, train=False)

    jax.eval_shape(probe, variables, jnp.asarray(sample[:1]))
    return "head_input" if "head" in seen else "logits"


def _classify(fn, variables, images: np.ndarray, batch_size: int = images_lib.GENERATE_BATCH):
    """``(logits [N, F], features [N, D])`` in fixed-size batches (one compilation)."""
    return images_lib.in_batches(lambda x: fn(variables, x), images, batch_size=batch_size)


@images_lib.cpu_friendly_random
def generation_quality(
    model,
    state,
    synthetic_images,
    synthetic_ids,
    real_train_source,
    real_test_source,
    *,
    taxonomy: findings_lib.Taxonomy = findings_lib.DEFAULT,
    max_real_images: int = 1000,
) -> dict:
    """How a classifier trained on real images only sees generated images.

    Args:
      model: the flax classifier (``apply(variables, x, train=False) -> logits [B, F]``).
      state: its TrainState (``params``, ``batch_stats``) or a variables dict.
      synthetic_images: float ``[N, S, S, 1]`` in [0, 1] (renormalised per image by the
        99.5th percentile here, as the data pipeline does with stored synthetic counts).
      synthetic_ids: int ``[N]`` finding-set ids the images were generated for.
      real_train_source, real_test_source: random-access records of real images
        (at most ``max_real_images`` of each, a seeded subset).
      taxonomy: the label space of the ids and of the classifier's outputs.

    Returns:
      ``agreement`` — share of generated images whose predicted finding set
      (``findings.predict`` then ``taxonomy.set_id_of_multi_hot``) is the conditioned
      one; ``agreement_per_set`` (folder name -> share); ``real_test_agreement`` (the
      same on real test images: the classifier's own exact-match accuracy, the
      ceiling to compare with); ``frechet_generated_vs_real`` (real test vs generated)
      and ``frechet_real_vs_real`` (as many real train images as generated ones vs
      the same real test images: the floor at the same sample size, since the
      estimate grows as samples shrink), both in the classifier's ``feature_space``
      (``head_input``: penultimate, or ``logits``).
    """
    variables = variables_of(state)
    synthetic_images = np.asarray(synthetic_images, np.float32)
    synthetic_ids = np.asarray(synthetic_ids).astype(np.int64)
    size = synthetic_images.shape[1]
    gen = transforms.normalize_counts(synthetic_images)
    train_x, _ = images_lib.real_images(real_train_source, size, limit=max_real_images)
    test_x, test_ids = images_lib.real_images(real_test_source, size, limit=max_real_images)

    fn = classifier_features_fn(model)
    gen_logits, gen_feats = _classify(fn, variables, gen)
    test_logits, test_feats = _classify(fn, variables, test_x)
    _, train_feats = _classify(fn, variables, train_x)
    space = _feature_space(model, variables, gen)

    def predicted_sets(logits):
        return taxonomy.set_id_of_multi_hot(findings_lib.predict(1.0 / (1.0 + np.exp(-logits.astype(np.float64)))))

    gen_pred = predicted_sets(gen_logits)
    hits = gen_pred == synthetic_ids
    per_set = {
        taxonomy.folder_name(s): float(hits[synthetic_ids == s].mean())
        for s in range(taxonomy.num_sets)
        if np.any(synthetic_ids == s)
    }
    return {
        "agreement": float(hits.mean()),
        "agreement_per_set": per_set,
        "real_test_agreement": float(np.mean(predicted_sets(test_logits) == test_ids)),
        "frechet_generated_vs_real": metrics_lib.frechet_distance(test_feats, gen_feats),
        # The estimate grows as the sample shrinks: the floor compares as many real training
        # images as there are generated ones with the same test images.
        "frechet_real_vs_real": metrics_lib.frechet_distance(_same_size(train_feats, len(gen_feats)), test_feats),
        "feature_space": space,
        "feature_dim": int(gen_feats.shape[1]),
        "images": {
            "generated": int(len(gen)),
            "real_train": int(min(len(train_x), len(gen))),
            "real_test": int(len(test_x)),
        },
    }


def _same_size(features: np.ndarray, n: int) -> np.ndarray:
    """A fixed random subset of ``n`` rows (all rows when there are no more than ``n``)."""
    if len(features) <= n:
        return features
    return features[np.sort(np.random.default_rng(0).permutation(len(features))[:n])]


def quality_gate(quality: dict) -> dict:
    """The verdict on :func:`generation_quality`'s numbers: ``{'passed', 'reasons',
    'agreement', 'judge_accuracy', 'frechet', 'frechet_real_vs_real', 'frechet_ratio',
    'min_agreement', 'max_frechet'}``."""
    judge = float(quality["real_test_agreement"])
    agreement = float(quality["agreement"])
    frechet = float(quality["frechet_generated_vs_real"])
    floor = float(quality["frechet_real_vs_real"])
    ratio = frechet / floor if floor > 0 else float("inf")
    reasons = []
    if not agreement >= MIN_AGREEMENT_SHARE * judge:
        reasons.append(
            f"agreement {agreement:.3f} < {MIN_AGREEMENT_SHARE} x the judge's accuracy on real test images ({judge:.3f})"
        )
    if not ratio <= MAX_FRECHET_RATIO:
        reasons.append(f"Fréchet distance {frechet:.3f} > {MAX_FRECHET_RATIO:g} x the real-vs-real floor ({floor:.3f})")
    return {
        "passed": not reasons,
        "reasons": reasons,
        "agreement": agreement,
        "judge_accuracy": judge,
        "frechet": frechet,
        "frechet_real_vs_real": floor,
        "frechet_ratio": ratio,
        "min_agreement": MIN_AGREEMENT_SHARE * judge,
        "max_frechet": MAX_FRECHET_RATIO * floor,
    }


def write_verdict(gan_dir, verdict: dict) -> None:
    """Keeps the verdict beside the GAN runs (``<gan_dir>/quality.json``), where
    ``jaxthyroid augment`` finds it."""
    run_files.write_json(pathlib.Path(gan_dir) / VERDICT_FILE, verdict)


def read_verdict(gan_dir) -> dict | None:
    path = pathlib.Path(gan_dir) / VERDICT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def warn_failing(verdict: dict, *, stream=None) -> str:
    """Prints a loud banner for a failed gate (stderr) and returns its text."""
    bar = "!" * 78
    lines = [bar, "!! GENERATED IMAGES FAIL THE QUALITY GATE: every GAN arm is run with failing images"]
    lines += [f"!!   {r}" for r in verdict["reasons"]]
    lines.append(bar)
    text = "\n".join(lines)
    print(text, file=stream or sys.stderr, flush=True)
    return text

"""GAN losses: pure, keyword-only functions of logits, images and features.

Adversarial losses are the non-saturating binary cross-entropy of Goodfellow et al.
on logits (the discriminators have no sigmoid):

    L_D = -log σ(D(x)) - log(1 - σ(D(G(z))))    = softplus(-real) + softplus(fake)
    L_G = -log σ(D(G(z)))                       = softplus(-fake)

SRGAN's generator loss is ``content + 1e-3 · L_G`` (Ledig et al. eq. 3); the
content term is pluggable (:func:`content_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

# ``fn(*, sr, hr, sr_features=None, hr_features=None) -> scalar``.
ContentLoss = Callable[..., jax.Array]
FeatureFn = Callable[[jax.Array], "jax.Array | Sequence[jax.Array]"]

CONTENT_LOSSES = ("mse", "feature_matching", "classifier", "vgg19")


def discriminator_loss(*, real_logit: jax.Array, fake_logit: jax.Array) -> jax.Array:
    """BCE of D on real (target 1) plus fake (target 0); logits ``[batch]`` -> scalar."""
    return jnp.mean(jax.nn.softplus(-real_logit)) + jnp.mean(jax.nn.softplus(fake_logit))


def generator_loss(*, fake_logit: jax.Array) -> jax.Array:
    """Non-saturating generator loss, BCE of D on fakes with target 1; ``[batch]`` -> scalar."""
    return jnp.mean(jax.nn.softplus(-fake_logit))


def mse_loss(*, sr: jax.Array, hr: jax.Array) -> jax.Array:
    """Pixel MSE between super-resolved and high-resolution images ``[batch, H, W, C]``."""
    return jnp.mean(jnp.square(sr.astype(jnp.float32) - hr.astype(jnp.float32)))


def feature_distance(*, real_features, fake_features) -> jax.Array:
    """Mean over layers of the mean squared difference of feature maps.

    ``real_features`` / ``fake_features``: an array or a sequence of arrays of equal
    shapes. Gradients flow only into ``fake_features``.
    """
    if isinstance(real_features, jax.Array):
        real_features, fake_features = [real_features], [fake_features]
    terms = [
        jnp.mean(jnp.square(f.astype(jnp.float32) - jax.lax.stop_gradient(r).astype(jnp.float32)))
        for r, f in zip(real_features, fake_features, strict=True)
    ]
    return sum(terms) / len(terms)


def content_loss(kind: str = "feature_matching", *, feature_fn: FeatureFn | None = None) -> ContentLoss:
    """The SRGAN content loss ``fn(*, sr, hr, sr_features=None, hr_features=None)``.

    Args:
      kind: ``'mse'`` — pixel MSE; ``'feature_matching'`` (default) — L2 between the
        discriminator's intermediate features of ``hr`` and ``sr`` (the step passes
        them as ``hr_features`` / ``sr_features``; no external network needed);
        ``'classifier'`` — L2 between ``feature_fn`` features (e.g. a trained
        thyroid ResNet's apply fn); ``'vgg19'`` — the paper's VGG loss: same as
        ``'classifier'`` with a VGG19 feature extractor the user builds from their
        own weights file (nothing is downloaded).
      feature_fn: ``[batch, H, W, C] -> features`` (array or list of arrays); needed
        for ``'classifier'`` and ``'vgg19'``. Its parameters are closed over and not
        trained.
    """
    if kind == "mse":
        return lambda *, sr, hr, sr_features=None, hr_features=None: mse_loss(sr=sr, hr=hr)
    if kind == "feature_matching":

        def feature_matching(*, sr, hr, sr_features=None, hr_features=None):
            if sr_features is None or hr_features is None:
                raise ValueError("feature_matching content loss needs the discriminator's sr/hr features")
            return feature_distance(real_features=hr_features, fake_features=sr_features)

        return feature_matching
    if kind in ("classifier", "vgg19"):
        if feature_fn is None:
            raise ValueError(
                f"content loss {kind!r} needs feature_fn=[batch,H,W,C] -> features; for 'vgg19' load VGG19 "
                "weights from your own file and pass its feature extractor (nothing is downloaded)"
            )

        def network_features(*, sr, hr, sr_features=None, hr_features=None):
            return feature_distance(real_features=feature_fn(hr), fake_features=feature_fn(sr))

        return network_features
    raise ValueError(f"unknown content loss {kind!r}; expected one of {CONTENT_LOSSES}")

"""Train/eval steps: 8 devices equal 1 device (BatchNorm included), masks, NaN flag,
optimiser param groups."""

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from tolerance import fp_tolerance, max_abs

from jaxthyroid import parallel
from jaxthyroid.models import layers, resnet, upsample
from jaxthyroid.train import optim, steps
from jaxthyroid.train import state as state_lib

F = 6


class TinyNet(nn.Module):
    """conv -> BatchNorm -> relu -> mean -> dense; BatchNorm synchronised via ``axis_name``."""

    num_findings: int = F
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(8, (3, 3), strides=2, use_bias=False, dtype=self.dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.axis_name, dtype=self.dtype)(x)
        x = nn.relu(x)
        x = nn.Dense(8, dtype=self.dtype, name="cross_term")(x.mean((1, 2)))
        return nn.Dense(self.num_findings, dtype=self.dtype)(nn.relu(x))


class TinyNetNoAxisField(nn.Module):
    """Same without an ``axis_name`` field: the steps must still synchronise its BatchNorm."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(8, (3, 3), strides=2, use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(F)(nn.relu(x).mean((1, 2)))


class TinyNetIm2col(nn.Module):
    """The im2col layers (custom-VJP ``patch_matmul``, shared sub-pixel patches) under
    ``shard_map``: replicated kernels, per-device patches."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = layers.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = upsample.SubPixelConvTranspose(4, im2col=True, shared_patches_min_size=1)(nn.relu(x))
        return nn.Dense(F)(nn.relu(x).mean((1, 2)))


def _batches(n, batch=16, size=16, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        labels = np.zeros((batch, F), np.float32)
        labels[np.arange(batch), rng.integers(0, F, batch)] = 1
        # Images whose statistics differ across the batch, so per-device BN stats would differ.
        images = rng.normal(size=(batch, size, size, 1)).astype(np.float32)
        images *= np.linspace(0.2, 3.0, batch)[:, None, None, None]
        images += np.linspace(-2, 2, batch)[:, None, None, None]
        out.append({"image": images, "findings": labels})
    return out


@functools.cache
def _tiny_init():
    """Host copy of an initialised TinyNet state (init compiled once for the module)."""
    return jax.device_get(
        state_lib.create_train_state(jax.random.key(0), TinyNet(), optax.sgd(0.1, momentum=0.9), (1, 16, 16, 1))
    )


def _state(tx=None, mesh=None):
    """A fresh device copy of the TinyNet init, with optimiser ``tx`` (default SGD 0.1, 0.9)."""
    init = _tiny_init()
    if tx is not None:
        init = state_lib.TrainState.create(
            apply_fn=init.apply_fn, params=init.params, tx=tx, batch_stats=init.batch_stats
        )
    return jax.device_put(init, parallel.replicated(mesh or parallel.make_mesh(1)))


@functools.cache
def _single_device_steps():
    return steps.make_classifier_steps(TinyNet(), None, donate=False)


def _run(model, mesh, batches, init):
    """3 SGD steps from ``init`` (host copy of a state), placed replicated on ``mesh``."""
    st = jax.device_put(init, parallel.replicated(mesh))
    train_step, _ = steps.make_classifier_steps(model, mesh)
    losses = []
    for b in batches:
        st, m = train_step(st, parallel.shard_batch(b, mesh), jax.random.key(1))
        losses.append(float(m["loss"]))
    return st, losses


@pytest.mark.parametrize(
    "make_model",
    [
        TinyNet,  # ``axis_name`` field
        TinyNetNoAxisField,  # no field: BatchNorm intercepted
        TinyNetIm2col,  # custom-VJP im2col convs
        pytest.param(
            lambda: resnet.ResNetTiny(num_classes=F, cross=True),  # ``bn_axis_name``
            marks=pytest.mark.skipif(
                not os.environ.get("JAXTHYROID_SLOW_TESTS"), reason="~100 s on 2 cores; JAXTHYROID_SLOW_TESTS=1"
            ),
        ),
    ],
    ids=["axis_name", "no_field", "im2col", "resnet_tiny"],
)
def test_eight_devices_equal_one_device(make_model):
    batches = _batches(3)
    model = make_model()
    init = (
        _tiny_init()
        if model == TinyNet()
        else jax.device_get(
            state_lib.create_train_state(jax.random.key(0), model, optax.sgd(0.1, momentum=0.9), (1, 16, 16, 1))
        )
    )
    one, losses1 = _run(model, parallel.make_mesh(1), batches, init)
    eight, losses8 = _run(model, parallel.make_mesh(8), batches, init)
    # 8 partial sums vs 1: BatchNorm statistics and weight gradients sum 16×8×8 terms; 3 steps
    # of forward + backward through at most one layer per parameter leaf.
    tol = dict(reduction_size=16 * 8 * 8, depth=3 * 2 * len(jax.tree.leaves(init.params)))
    np.testing.assert_allclose(losses8, losses1, **fp_tolerance(**tol))
    for a, b in zip(jax.tree.leaves((eight.params, eight.batch_stats)), jax.tree.leaves((one.params, one.batch_stats))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **fp_tolerance(**tol, scale=max_abs(b)))
    # The parameters and statistics moved: not a comparison of two untouched inits.
    moved = [
        np.abs(np.asarray(a) - b).max()
        for a, b in zip(
            jax.tree.leaves((one.params, one.batch_stats)), jax.tree.leaves((init.params, init.batch_stats))
        )
    ]
    assert np.mean(np.array(moved) > 1e-6) > 0.5, moved
    assert losses1[2] != losses1[0]
    assert int(eight.step) == 3


def test_per_device_batch_norm_would_differ():
    """Guards the test above: normalising each 2-image shard by its own statistics
    (what unsynchronised BatchNorm on 8 devices does) gives another loss."""
    step1, _ = _single_device_steps()
    st = _state()
    batch = _batches(1)[0]
    global_loss = float(step1(st, batch, jax.random.key(1))[1]["loss"])
    per_shard = np.mean(
        [
            float(step1(st, {k: v[i * 2 : (i + 1) * 2] for k, v in batch.items()}, jax.random.key(1))[1]["loss"])
            for i in range(8)
        ]
    )
    assert abs(per_shard - global_loss) > 1e-3


def test_eval_step_masks_padding():
    mesh = parallel.make_mesh(8)
    st = _state(mesh=mesh)
    _, eval_step = steps.make_classifier_steps(TinyNet(), mesh)
    batch = _batches(1)[0]
    batch["mask"] = np.array([1] * 11 + [0] * 5, np.float32)
    out = eval_step(st, parallel.shard_batch(batch, mesh))
    logits = np.asarray(out["logits"])
    assert logits.shape == (16, F)
    per_image = np.asarray(steps.findings_loss(jnp.asarray(logits), batch["findings"]))
    assert float(out["count"]) == 11.0
    # 11 images × F findings of cross-entropy, summed in another order
    np.testing.assert_allclose(float(out["loss_sum"]), per_image[:11].sum(), **fp_tolerance(reduction_size=11 * F))
    # Eval uses running statistics: same logits on one device; no mask = all count.
    out1 = _single_device_steps()[1](_state(), {k: batch[k] for k in ("image", "findings")})
    # conv 3×3, the 8×8 spatial mean and two Dense layers: 4 stages, the longest sum 64 terms
    np.testing.assert_allclose(
        np.asarray(out1["logits"]), logits, **fp_tolerance(reduction_size=64, depth=4, scale=max_abs(logits))
    )
    assert float(out1["count"]) == 16.0


def test_nan_batch_sets_finite_false_and_donation():
    train_step, _ = steps.make_classifier_steps(TinyNet(), None)  # donates
    st = _state()
    good = _batches(1)[0]
    st2, m = train_step(st, good, jax.random.key(1))
    assert bool(m["finite"])
    assert all(x.is_deleted() for x in jax.tree.leaves(st.params))  # donated
    bad = dict(good, image=np.full_like(good["image"], np.nan))
    _, m = train_step(st2, bad, jax.random.key(1))
    assert not bool(m["finite"])


def test_bfloat16_compute():
    train_step, _ = steps.make_classifier_steps(
        TinyNet(dtype=jnp.bfloat16), None, compute_dtype=jnp.bfloat16, donate=False
    )
    st = _state()
    b = _batches(1)[0]
    _, m16 = train_step(st, b, jax.random.key(1))
    _, m32 = _single_device_steps()[0](st, b, jax.random.key(1))
    assert st.params["Dense_0"]["kernel"].dtype == jnp.float32  # params stay float32
    assert bool(m16["finite"])
    assert float(m16["loss"]) != float(m32["loss"])  # really computed in bfloat16
    # XLA accumulates bfloat16 sums in float32: the error is bfloat16's rounding of each of
    # the 4 layers' inputs and outputs, not a sum's growth (reduction_size 1).
    np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), **fp_tolerance(jnp.bfloat16, depth=4))


def _cfg(**kw):
    c = ml_collections.ConfigDict(
        dict(
            optimizer="sgd",
            learning_rate=0.1,
            momentum=0.9,
            weight_decay=1e-4,
            schedule="constant",
            warmup_steps=0,
            total_steps=10,
            param_groups=[],
        )
    )
    c.update(kw)
    return c


@pytest.mark.parametrize(
    "groups,frozen",
    [
        ([("cross_term", "frozen")], "cross_term"),  # phase 1: the cross term stays at init
        ([("^(?!cross_term)", "frozen")], "not cross_term"),  # phase 2: only the cross term trains
    ],
)
def test_param_groups_freeze(groups, frozen):
    st = _state(tx=optim.make_optimizer(_cfg(param_groups=groups)))
    before = jax.tree.map(np.asarray, st.params)
    st, _ = _single_device_steps()[0](st, _batches(1)[0], jax.random.key(1))
    after = jax.tree.map(np.asarray, st.params)
    for name in before:
        changed = any(
            not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]))
        )
        is_frozen = (name == "cross_term") == (frozen == "cross_term")
        assert changed != is_frozen, (name, changed)


def test_param_group_multiplier_and_schedules():
    params = {"cross_term": {"w": jnp.ones((2, 2))}, "body": {"w": jnp.ones((2, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = optim.make_optimizer(_cfg(momentum=0.0, weight_decay=0.0, param_groups=[("cross_term", 0.1)]))
    updates, _ = tx.update(grads, tx.init(params), params)
    # closed-form values after a few float32 roundings (lr, multiplier, cosine, product)
    np.testing.assert_allclose(updates["body"]["w"], -0.1, **fp_tolerance(depth=2))
    np.testing.assert_allclose(updates["cross_term"]["w"], -0.01, **fp_tolerance(depth=3))
    warm = optim.make_schedule(_cfg(schedule="warmup_cosine", warmup_steps=4, total_steps=10))
    assert float(warm(0)) == 0.0  # exact: 0 × anything
    np.testing.assert_allclose(float(warm(4)), 0.1, **fp_tolerance(depth=4))
    np.testing.assert_allclose(float(warm(10)), 0.0, **fp_tolerance(depth=4, scale=0.1))
    np.testing.assert_allclose(float(optim.make_schedule(_cfg(schedule="cosine"))(5)), 0.05, **fp_tolerance(depth=4))
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer(_cfg(optimizer="lamb"))
    adamw = optim.make_optimizer(_cfg(optimizer="adamw"))
    assert adamw.init(params) is not None


def test_runtime_schedule_equals_optax_and_keeps_numbers_out_of_the_program():
    import optax

    ref = optax.warmup_cosine_decay_schedule(0.0, 0.05, warmup_steps=7, decay_steps=40)
    ours = optim.make_schedule(_cfg(schedule="warmup_cosine", learning_rate=0.05, warmup_steps=7, total_steps=40))
    np.testing.assert_allclose(  # the same cosine formula, written differently: a few roundings of values <= 0.05
        [float(ours(i)) for i in range(45)], [float(ref(i)) for i in range(45)], **fp_tolerance(depth=4, scale=0.05)
    )
    # SGD with momentum and weight decay: the same updates as optax's own chain.
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
    tx = optim.make_optimizer(_cfg(schedule="warmup_cosine", warmup_steps=2, total_steps=10))
    want = optax.chain(
        optax.add_decayed_weights(1e-4, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
        optax.sgd(optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 10), momentum=0.9),
    )
    s_ours, s_want = tx.init(params), want.init(params)
    for _ in range(4):
        u_ours, s_ours = tx.update(grads, s_ours, params)
        u_want, s_want = want.update(grads, s_want, params)
        for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_want)):
            # 4 steps of decay + momentum + schedule (a few roundings each), in another order
            np.testing.assert_allclose(a, b, **fp_tolerance(depth=4 * 4, scale=max_abs(b)))

    # Two runs differing only in learning rate and length compile the same program.
    def hlo(**kw):
        t = optim.make_optimizer(_cfg(schedule="warmup_cosine", **kw))
        return jax.jit(t.update).lower(grads, t.init(params), params).as_text()

    assert hlo(learning_rate=0.1, warmup_steps=2, total_steps=10) == hlo(
        learning_rate=0.02, warmup_steps=0, total_steps=300
    )

"""The training loop: SIGKILL + resume is bit-identical, NaN stops the run, checkpoints."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import gan_tiny  # noqa: E402
import train_tiny  # noqa: E402

from jaxthyroid.train import loop  # noqa: E402
from jaxthyroid.train import state as state_lib
from jaxthyroid.train.checkpoint import CheckpointError  # noqa: E402
from jaxthyroid.train.run_log import read_metrics  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    """Compiled once for the module: mesh of 2, initial state, steps."""
    mesh, state0, train_step, eval_step = train_tiny.setup()
    fresh = lambda: jax.tree.map(jnp.copy, state0)  # steps donate their input state
    return dict(mesh=mesh, fresh=fresh, train_step=train_step, eval_step=eval_step)


def _run(tiny, workdir, **kwargs):
    return train_tiny.run(
        workdir,
        mesh=tiny["mesh"],
        state=tiny["fresh"](),
        train_step=tiny["train_step"],
        eval_step=tiny["eval_step"],
        **kwargs,
    )


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """An uninterrupted run."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    state, history = _run(tiny, workdir)
    return workdir, train_tiny.flat_params(state), history


def _assert_identical(params, ref):
    assert params.keys() == ref.keys()
    for k in ref:
        assert np.array_equal(params[k], ref[k]), f"{k} differs after resume"


def test_uninterrupted_run_logs_and_learns(reference):
    workdir, _, history = reference
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["step"] == train_tiny.EPOCHS * train_tiny.STEPS_PER_EPOCH
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[0]["val_count"] == 6  # two padding images masked out
    events = read_metrics(workdir)
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [6, 12, 18]
    assert all({"step", "epoch", "phase"} <= e.keys() for e in events)
    assert any(e["event"] == "train" and "loss" in e for e in events)
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    # latest N (keep=2) plus the best by val_exact_match.
    assert sorted(int(p.name) for p in (workdir / "checkpoints/latest").iterdir() if p.name.isdigit()) == [16, 18]
    best = [p for p in (workdir / "checkpoints/best").iterdir() if p.name.isdigit()]
    best_epoch = int(np.argmax([h["val_exact_match"] for h in history]))
    assert [int(p.name) for p in best] == [history[best_epoch]["step"]]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tiny, reference, tmp_path):
    _, ref_params, ref_history = reference
    # Global batch 10 is epoch 2, batch 5; the checkpoint at step 8 is mid-epoch 2.
    child = subprocess.Popen(
        [sys.executable, str(REPO / "tests/train_tiny.py"), str(tmp_path), "--hang-at", "10"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    mid_epoch = tmp_path / "checkpoints/latest/8"
    deadline = time.time() + 240
    while not mid_epoch.exists():
        if child.poll() is not None:
            pytest.fail(f"training subprocess exited early:\n{child.stdout.read().decode()[-3000:]}")
        if time.time() > deadline:
            child.kill()
            pytest.fail("no mid-epoch checkpoint appeared")
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "final.npz").exists()

    state, history = _run(tiny, tmp_path)  # resumes from step 8
    _assert_identical(train_tiny.flat_params(state), ref_params)
    assert history == ref_history
    steps = [e["step"] for e in read_metrics(tmp_path) if e["event"] == "eval"]
    assert steps == [6, 12, 18]  # events after the checkpoint were not duplicated


def test_interrupt_with_iterator_state_then_resume(tiny, reference, tmp_path):
    """A grain-like iterator: its get_state() is checkpointed and set_state() restores it."""
    _, ref_params, ref_history = reference

    class Crash(Exception):
        pass

    class CrashingIterator(train_tiny.EpochIterator):
        def __next__(self):
            if self.epoch * train_tiny.STEPS_PER_EPOCH + self.index == 10:
                raise Crash
            return super().__next__()

    with pytest.raises(Crash):
        _run(tiny, tmp_path, train_batches=CrashingIterator)
    data = json.loads((tmp_path / "checkpoints/latest/8/data/metadata").read_text())
    assert data == {"kind": "json", "value": {"epoch": 1, "index": 2}}

    restored_with = []

    class RecordingIterator(train_tiny.EpochIterator):
        def set_state(self, s):
            restored_with.append(s)
            super().set_state(s)

    state, history = _run(tiny, tmp_path, train_batches=RecordingIterator)
    assert restored_with == [{"epoch": 1, "index": 2}]
    _assert_identical(train_tiny.flat_params(state), ref_params)
    assert history == ref_history


def test_finished_run_is_not_retrained(tiny, reference):
    workdir, ref_params, ref_history = reference
    state, history = _run(tiny, workdir)
    assert history == ref_history
    _assert_identical(train_tiny.flat_params(state), ref_params)


def test_nan_stops_run_and_last_good_checkpoint_restores(tiny, tmp_path):
    # Global batch 6 = step 7 (epoch 2). Checkpoints at 4 and 6 (end of epoch 1); the
    # NaN is found when flushing before the step-8 save, which must not happen.
    with pytest.raises(
        loop.TrainingDiverged,
        match=r"at step 7\b.*last good checkpoint is "
        r"step 6",
    ) as err:
        _run(tiny, tmp_path, train_batches=lambda e: train_tiny.plain_batches(e, nan_at=6), log_every=100)
    assert err.value.step == 7 and err.value.last_good_step == 6
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints/latest").iterdir() if p.name.isdigit())
    assert saved == [4, 6]
    restored = loop.restore_state(tmp_path, tiny["fresh"]())
    assert int(restored.step) == 6
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
    assert read_metrics(tmp_path)[-1]["event"] == "diverged"


def test_restore_errors(tiny, reference, tmp_path):
    workdir, _, _ = reference
    with pytest.raises(CheckpointError, match="no latest checkpoint"):
        loop.restore_state(tmp_path / "nothing", tiny["fresh"]())

    class OtherHead(nn.Module):  # another architecture: 5 findings and no BatchNorm
        @nn.compact
        def __call__(self, x, *, train):
            return nn.Dense(5)(nn.Conv(8, (3, 3), strides=2, use_bias=False)(x).mean((1, 2)))

    other = jax.eval_shape(
        lambda: state_lib.create_train_state(  # shapes suffice: no compile
            jax.random.key(0), OtherHead(), optax.sgd(0.1, 0.9), (1, 16, 16, 1)
        )
    )
    with pytest.raises(
        CheckpointError,
        match=r"does not fit(.|\n)*Dense_0.kernel: checkpoint "
        r"shape \(8, 6\), model shape \(8, 5\)",
    ):
        loop.restore_state(workdir, other)

    best = loop.restore_state(workdir, tiny["fresh"](), which="best")
    assert int(best.step) in (6, 12, 18)

    broken = tmp_path / "broken"
    shutil.copytree(workdir / "checkpoints", broken / "checkpoints")
    shutil.rmtree(broken / "checkpoints/latest/18/state")
    with pytest.raises(CheckpointError, match="18"):
        loop.restore_state(broken, tiny["fresh"]())


@pytest.mark.parametrize(
    "kind, hang_at, hang_seed, checkpoint",
    [
        # DCGAN: 4 steps an epoch, checkpoints every 3: killed before global batch 3,
        # after the mid-epoch checkpoint at step 3; 6 steps end mid-epoch 2 (the budget).
        ("dcgan", 3, 0, "checkpoints/latest/3"),
        # SRGAN: pre-training finished, the GAN phase (batch seed 1) killed after its
        # mid-epoch checkpoint at step 2.
        ("srgan", 2, 1, "gan/checkpoints/latest/2"),
    ],
)
def test_gan_sigkill_then_resume_is_bit_identical(kind, hang_at, hang_seed, checkpoint, tmp_path):
    """The classifier's resume guarantee, through the same loop, for the GAN trainings."""
    reference = tmp_path / "uninterrupted"
    gan_tiny.run(kind, reference)
    killed = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, str(REPO / "tests/gan_tiny.py"), kind, str(killed), "--hang-at", str(hang_at)]
        + ["--hang-seed", str(hang_seed)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 240
    while not (killed / checkpoint).exists():
        if child.poll() is not None:
            pytest.fail(f"training subprocess exited early:\n{child.stdout.read().decode()[-3000:]}")
        if time.time() > deadline:
            child.kill()
            pytest.fail("no mid-epoch checkpoint appeared")
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (killed / "done.json").exists()

    summary = gan_tiny.run(kind, killed)  # resumes from the checkpoint
    phase = summary if kind == "dcgan" else summary["gan"]
    assert phase["resumed_from_step"] == hang_at and phase["steps"] == (6 if kind == "dcgan" else 3)
    _assert_identical(gan_tiny.final_params(kind, killed), gan_tiny.final_params(kind, reference))
    logs = ["."] if kind == "dcgan" else ["pretrain", "gan"]
    for sub in logs:  # the same events, none duplicated after the checkpoint
        assert read_metrics(killed / sub) == read_metrics(reference / sub)

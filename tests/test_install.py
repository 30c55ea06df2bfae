"""The installed package works from any directory: ``pip install .`` (not editable) into a
fresh venv, then ``jaxthyroid`` commands from an empty directory find the configs.

About a minute on 2 cores (mostly the tiny run's compiles), so it runs when
``JAXTHYROID_INSTALL_TEST=1`` — ``.ci/run`` and ``make install-check`` set it. The venv
sees this interpreter's packages (JAX, flax, ...) through a ``.pth`` file, so nothing
is downloaded; only jaxthyroid itself is built and installed, from a copy of the tree.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("JAXTHYROID_INSTALL_TEST"), reason="~1 min; JAXTHYROID_INSTALL_TEST=1 (.ci/run sets it)"
    ),
]

# Shrinks cross_training_quick to seconds: 32 images, resnet_tiny, 2 steps a phase.
TINY_RUN = [
    "--config.data.n_train=16",
    "--config.data.n_val=8",
    "--config.data.n_test=8",
    "--config.data.batch_size=8",
    "--config.data.eval_batch_size=8",
    "--config.data.augment=False",
    "--config.model.name=resnet_tiny",
    "--config.model.num_filters=8",
    "--config.phase1.steps=2",
    "--config.phase2.steps=2",
    "--config.plain.steps=2",
    "--config.eval_every_steps=2",
    "--config.checkpoint_every_steps=2",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> pathlib.Path:
    """A venv with a non-editable install of a copy of this tree; returns its bin/."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "jaxthyroid", src / "jaxthyroid", ignore=ignore)
    shutil.copytree(ROOT / "experiments" / "configs", src / "experiments" / "configs", ignore=ignore)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = pathlib.Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # This interpreter's site-packages after the venv's own: JAX & co. without a download.
    # (Its .pth files are not run, so an editable jaxthyroid there stays invisible.)
    (purelib / "_host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
        check=True,
    )
    return venv / "bin"


def _run(bin_dir, cwd, *args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    return subprocess.run(
        [str(bin_dir / "jaxthyroid"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_installed_package_is_not_the_checkout(installed, tmp_path):
    out = subprocess.run(
        [str(installed / "python"), "-c", "import jaxthyroid, jaxthyroid.configs; print(jaxthyroid.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ROOT) not in out and "site-packages" in out


def test_help_from_an_empty_directory(installed, tmp_path):
    r = _run(installed, tmp_path, "train", "--config", "cross_training_quick", "--help")
    assert r.returncode == 0, r.stderr
    assert "--config" in r.stdout
    r = _run(installed, tmp_path, "bench", "--help")  # benchmarks/ is not installed: says so
    assert r.returncode == 0 and "source checkout" in r.stderr
    r = _run(installed, tmp_path, "train", "--config", "no_such_config")
    assert r.returncode != 0 and "cross_training_quick" in r.stderr  # lists the installed configs


def test_tiny_train_from_an_empty_directory(installed, tmp_path):
    r = _run(installed, tmp_path, "train", "--config", "cross_training_quick", *TINY_RUN)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "| phase2 | 2 |" in r.stdout
    assert (tmp_path / "runs" / "cross_training_quick").is_dir()

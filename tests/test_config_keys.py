"""Every key the code reads is declared in the config files (issue 12, item 7).

Each config in experiments/configs is loaded, locked (assigning an undeclared key
raises) and run through the functions that read it: ``cross_training.validate`` for
the cross-training configs; for the reproduce presets every classifier arm's config
(``classifier_config`` writes each arm's changes into a locked copy) and the
step-matching check. ConfigDict attribute reads of an undeclared key raise, so what
is left to forbid is a read with a default: no ``.get(`` on a config in the modules
that read classifier configs.
"""

import pathlib
import re

import pytest

from jaxthyroid import config as config_lib
from jaxthyroid import cross_training, reproduce

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.stem for p in (ROOT / "experiments" / "configs").glob("*.py") if not p.stem.startswith("_"))


def _locked(cfg):
    cfg.lock()
    return cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_every_key_read_is_declared(name):
    cfg = _locked(config_lib.load_config(name))
    if name.startswith("cross_training_"):
        cross_training.validate(cfg)
    elif name.startswith("reproduce_"):  # every arm's classifier config
        cross_training.validate(_locked(cfg.classifier))
        for changes in reproduce.arm_changes(cfg).values():
            cross_training.validate(reproduce.classifier_config(cfg, pathlib.Path("/nonexistent"), 0, **changes))
        reproduce.check_step_matched(cfg)
        for k in ("preset", "ablations", "baselines", "synthetic", "gan"):
            assert k in cfg, k
    else:  # gan_quick: its keys are read by jaxthyroid.gan and experiments/gan.py
        pytest.skip(f"{name}: not a classifier config")


def test_validate_fails_on_a_missing_key():
    cfg = config_lib.load_config("cross_training_quick")
    del cfg.phase2["warmup_fraction"]
    with pytest.raises(AttributeError, match="warmup_fraction"):
        cross_training.validate(cfg)


@pytest.mark.parametrize(
    "module",
    [str(p.relative_to(ROOT)) for p in sorted((ROOT / "jaxthyroid" / "cross_training").glob("*.py"))]
    + ["jaxthyroid/reproduce.py"],
)
def test_no_config_read_with_a_default(module):
    source = (ROOT / module).read_text()
    # cfg.x.get(...), c.data.get(...), cfg[name].get(...), p.get(...): a config read hiding a key.
    reads = re.findall(r"\b(?:cfg|c|p|data_cfg|phase_cfg)(?:\.\w+|\[[^\]]+\])*\.get\(", source)
    assert not reads, reads


def _gan_blocks(name):
    cfg = config_lib.load_config(name)
    return (cfg.gan.dcgan, cfg.gan.srgan) if "gan" in cfg else (cfg.dcgan, cfg.srgan)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("reproduce_") or n == "gan_quick"])
def test_every_gan_key_is_declared(name):
    """The GAN blocks declare every key the trainings read (jaxthyroid.gan.settings), so
    each is overridable from the command line."""
    from jaxthyroid.gan import settings

    dcgan_cfg, srgan_cfg = _gan_blocks(name)
    assert set(dcgan_cfg) == set(settings.DCGAN)
    assert set(srgan_cfg) == set(settings.SRGAN)
    prefix = "dcgan" if name == "gan_quick" else "gan.dcgan"
    overridden = config_lib.load_config(name, [f"--config.{prefix}.label_std=1.5"])
    assert (overridden.dcgan if name == "gan_quick" else overridden.gan.dcgan).label_std == 1.5


def test_an_unknown_gan_key_is_an_error():
    from jaxthyroid.gan import settings

    with pytest.raises(config_lib.ConfigError, match="label_sdt"):
        settings.complete({"label_sdt": 1.0}, settings.DCGAN)
    assert settings.complete({"steps": 7}, settings.DCGAN).steps == 7


@pytest.mark.parametrize("module", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "jaxthyroid" / "gan").glob("*.py")))
def test_no_gan_config_read_with_a_default(module):
    source = (ROOT / module).read_text()
    reads = re.findall(r"\b(?:cfg|c|gan_cfg|dcgan_cfg|srgan_cfg)(?:\.\w+|\[[^\]]+\])*\.get\(", source)
    assert not reads, reads

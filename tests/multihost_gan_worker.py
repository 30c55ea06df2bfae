"""One process of the tiny DCGAN run of tests/test_multihost_gan.py.

``python multihost_gan_worker.py dcgan|srgan WORKDIR``: joins ``jax.distributed``
when the environment says so (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``; a single process otherwise) and trains tests/gan_tiny.py's DCGAN or
SRGAN, sharded over every device of every process (``data_parallel``), in ``WORKDIR``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(kind: str, workdir: str) -> int:
    import gan_tiny
    import jax

    from jaxthyroid import parallel

    parallel.initialize_distributed()
    cfg = gan_tiny.dcgan_cfg() if kind == "dcgan" else gan_tiny.srgan_cfg()
    cfg.data_parallel = True
    assert cfg.batch_size % jax.device_count() == 0, (cfg.batch_size, jax.device_count())
    from jaxthyroid.gan import dcgan, srgan

    train = gan_tiny.records(32, 0)
    if kind == "dcgan":
        dcgan.train_dcgan(cfg, train, workdir, seed=0)
    else:
        srgan.train_srgan(cfg, train, gan_tiny.records(8, 1), workdir, seed=0, hr_size=16)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("JAXTHYROID_NO_TQDM", "1")
    sys.exit(main(sys.argv[1], sys.argv[2]))

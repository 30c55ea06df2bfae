"""The environment of the tests that run the CLI in a subprocess on a tiny preset."""

import os


def tiny_run_env() -> dict[str, str]:
    """This process's environment with one device and LLVM's optimisation level off:
    compiling is most of a tiny run, and the optimisation level changes how fast the
    compiled code runs, not what it computes (118 s -> 91 s cold on 2 cores)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
    env["PYTHONUNBUFFERED"] = "1"
    return env

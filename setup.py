"""Package layout only (metadata is in pyproject.toml): the experiment configs in
``experiments/configs`` install as ``jaxthyroid.configs``, so an installed package finds
them from any directory. pyproject.toml alone cannot add a mapped package to the ones
``find_packages`` discovers."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["jaxthyroid", "jaxthyroid.*"]), "jaxthyroid.configs"],
    package_dir={"jaxthyroid.configs": "experiments/configs"},
)

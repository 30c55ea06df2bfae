"""Experiment configs (``get_config()`` files), installed as ``jaxthyroid.configs``.

``jaxthyroid.config.load_config("cross_training_quick")`` finds them by name from any
directory; a path to any other config file works too.
"""

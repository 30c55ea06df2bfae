"""jaxthyroid: thyroid scintigraphy diagnosis in JAX/Flax.

DCGAN + SRGAN augmentation, a cross-residual ResNet and two-phase cross-training
(Yan'an University, 2020), on a physically grounded scintigraphy simulator.

Submodules are imported on use: ``import jaxthyroid`` stays cheap, and importing
``jaxthyroid.phantom`` never pulls in TFDS or grain (the GPU machines lack them).
"""

__version__ = "0.1.0"

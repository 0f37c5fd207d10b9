"""MCLNet for visible-infrared person re-identification, in JAX/Flax.

Importing the package applies its XLA:CPU defaults (`platform`). The user
guide is the README.
"""

from mclnet_jax import platform as _platform

# Before anything initialises JAX's backends: XLA reads XLA_FLAGS only then.
_platform.apply_cpu_defaults()

__version__ = "0.1.0"

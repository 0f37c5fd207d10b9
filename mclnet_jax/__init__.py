"""MCLNet for visible-infrared person re-identification, in JAX/Flax.

Importing the package changes nothing in the environment: the command line
(`mclnet_jax.main`) applies the XLA:CPU defaults of `platform`. The user
guide is the README and docs/.
"""

__version__ = "0.1.0"

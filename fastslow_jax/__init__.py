"""fastslow-jax: fast-slow hierarchical attention in JAX / Flax NNX."""

__version__ = '0.1.0'

"""`--config=configs/fastslow.py:arm=...,size=...,P=...` from a checkout.

The config itself ships with the package, so an installed copy has it too:
fastslow_jax/configs/fastslow.py (also reachable as `--config=fastslow:...`).
"""

from fastslow_jax.configs.fastslow import get_config  # noqa: F401

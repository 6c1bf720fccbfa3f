"""Config files that ship with the package (big_vision style); none of them imports jax.

Each module here has `get_config(arg)`. Name one by its module name wherever a config file is
expected: `--config=fastslow:arm=coupled,size=tiny` (a path to any other config file works too),
or in code `configlib.load('fastslow:arm=coupled,size=tiny')`.
"""

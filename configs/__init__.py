"""The recipes of `--config=NAME[:ARG]`, installed as `mclnet_jax.configs`.

Each of `sysu`, `regdb`, `llcm` and `synthetic` is a whole recipe: its
`get_config(arg)` writes every field (docs/training.md "Recipes and ablations").
`common` holds only what they share: `:ARG` parsing and the ablation table.
"""

import os

# The recipes `--config=NAME` resolves to (mclnet_jax.main).
RECIPES = ("llcm", "regdb", "synthetic", "sysu")


def recipe_path(name: str) -> str:
    """The file of recipe `name` (one of `RECIPES`)."""
    return os.path.join(
        os.path.dirname(os.path.abspath(__file__)), f"{name}.py"
    )

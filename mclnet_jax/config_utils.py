"""Helpers for the config files under configs/.

The config files are loaded by path (`--config=configs/sysu.py`), so they
cannot import each other as modules; they load their shared base through
`load_sibling` instead, which works from any working directory.
"""

import importlib.util
import os
import types


def load_sibling(
    config_file: str, name: str = "default.py"
) -> types.ModuleType:
    """Loads the config module `name` from the folder of `config_file`."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    spec = importlib.util.spec_from_file_location(
        "mclnet_configs_" + os.path.splitext(name)[0], path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

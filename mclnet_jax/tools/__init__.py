"""Command-line tools (run with `python -m mclnet_jax.tools.<name>`)."""

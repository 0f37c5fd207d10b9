"""Scripts that print the figures of benchmarks/README.md.

Each runs as `python benchmarks/<name>.py` with the project installed, or
as `python -m benchmarks.<name>` from the repository root.
"""

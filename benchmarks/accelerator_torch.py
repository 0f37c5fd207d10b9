"""The PyTorch release's side of benchmarks/accelerator.py (--torch).

Times `benchmarks.torch_release.make_step` (the release's training step in
PyTorch) at our batch on the same kind of device, in float32 and autocast
bfloat16, and puts our speed-up next to it.
"""

import statistics

from absl import app

from benchmarks import device_bench

# Our dtype -> the release's (a torch dtype name, or autocast).
DTYPES_TORCH = (("float32", "float32"), ("bfloat16", "autocast_bf16"))
RELEASE_NON_LOCAL = (0, 2, 3, 0)  # The release's non-local blocks per stage.


def bench_torch(config, num_classes: int, n: int, repeats: int) -> dict:
    """The release's PyTorch step (`benchmarks.torch_release`) at n+n.

    Call it before JAX initialises its backends: JAX preallocates most of a
    GPU's memory then. PyTorch gives its cached memory back afterwards. Runs
    on "cuda" when PyTorch sees a GPU, else on the CPU with every core. The
    model is `config`'s (`non_local_counts` is passed only where it is not
    the release's).

    Returns:
      {"device", "torch", "batch", "devices_used", "rows": [{"dtype",
      "torch_dtype", "median_ms", "images_per_s"}]}.

    Raises:
      app.UsageError: torch or benchmarks.torch_release cannot be imported.
    """
    try:
        from benchmarks import torch_release
    except ImportError as e:
        raise app.UsageError(
            f"--torch needs benchmarks/torch_release: {e}"
        ) from e
    try:
        torch = torch_release.require_torch()
    except ImportError as e:
        raise app.UsageError(f"--torch: {e}") from e
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch_release.set_threads()
    model = dict(
        depth=config.model.depth,
        width_multiplier=config.model.width_multiplier,
        num_classes=num_classes,
        image_size=tuple(config.data.image_size),
    )
    if tuple(config.model.non_local_counts) != RELEASE_NON_LOCAL:
        model["non_local_counts"] = tuple(config.model.non_local_counts)
    rows = []
    for dtype, torch_dtype in DTYPES_TORCH:
        step = torch_release.make_step(
            **model,
            batch=(n, n),
            device=device,
            dtype=getattr(torch, torch_dtype, torch_dtype),
        )
        _, times = device_bench.timed(
            lambda _, step=step: step(), None, repeats
        )
        med = statistics.median(times)
        rows.append(
            {
                "dtype": dtype,
                "torch_dtype": torch_dtype,
                "median_ms": med * 1e3,
                "images_per_s": 2 * n / med,
            }
        )
        del step
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "device": device,
        "torch": torch.__version__,
        "batch": [n, n],
        "devices_used": 1,
        "rows": rows,
    }


def add_speedups(torch_report: dict, ours: list[dict], jax_platform: str):
    """Adds our times and speed-ups (where both ran on one kind of device)."""
    same = {"gpu": "cuda", "cpu": "cpu"}.get(jax_platform)
    same = same == torch_report["device"]
    torch_report["comparable"] = same
    n = torch_report["batch"][0]
    for row in torch_report["rows"]:
        mine = [
            r["median_ms"]
            for r in ours
            if r["dtype"] == row["dtype"] and r["batch"][0] == n
        ]
        row["ours_median_ms"] = mine[0] if mine else None
        row["speedup"] = row["median_ms"] / mine[0] if mine and same else None

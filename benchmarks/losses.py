r"""Time of MCLNet's losses, forward and forward + backward, jitted.

One MCLNet training batch: 64 images (8 identities x 4 visible + 4
infrared), 2048-d features, 395 identity centers and 6 camera centers
(SYSU-MM01). "All losses" is what a training step evaluates:

  L_id + L_wrt + L_e + L_m + 5e-4 * (L_ica + L_cca)

with gradients with respect to every network output the losses read (pre-BN
`pool`, post-BN `bn`, identity logits, modality logits). The centers are
constants, as in the authors' release. The batch-hard triplet loss (the
"Base" ablation) and each loss on its own are timed separately. Prints the
median over `--repeats` calls, in milliseconds; compare the total with a
train step's time (goal: under 2% of a ResNet-50 step).

  python benchmarks/losses.py
  python benchmarks/losses.py --dtype=bfloat16 --repeats=500
  python benchmarks/losses.py --variant=release
"""

import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from mclnet_jax import losses, platform

# The CLI's XLA:CPU defaults, before JAX initialises its backends.
platform.apply_cpu_defaults()

_IDS_PER_BATCH = flags.DEFINE_integer("ids_per_batch", 8, "Identities.")
_IMAGES_PER_ID = flags.DEFINE_integer(
    "images_per_id", 8, "Images per identity (half visible, half infrared)."
)
_DIM = flags.DEFINE_integer("dim", 2048, "Feature dimension D.")
_NUM_IDS = flags.DEFINE_integer("num_ids", 395, "Identity centers / logits.")
_NUM_CAMERAS = flags.DEFINE_integer("num_cameras", 6, "Camera centers.")
_VARIANT = flags.DEFINE_enum(
    "variant", "paper", ["paper", "release"], "center_aggregation_loss variant."
)
_DTYPE = flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "bfloat16"],
    "Dtype of the network outputs fed to the losses.",
)
_REPEATS = flags.DEFINE_integer("repeats", 200, "Timed calls per figure.")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed calls after compiling.")

_LAMBDA = 5e-4  # ICA / CCA weight.
_SIGMA = 8.0
_RHO = 4500.0


def _make_batch(dtype):
    """Network outputs, labels and centers shaped like one MCLNet batch."""
    n = _IDS_PER_BATCH.value * _IMAGES_PER_ID.value
    keys = jax.random.split(jax.random.PRNGKey(0), 7)
    outputs = {
        # Post-ReLU GeM features are non-negative.
        "pool": jnp.abs(jax.random.normal(keys[0], (n, _DIM.value))),
        "bn": jax.random.normal(keys[1], (n, _DIM.value)),
        "id_logits": jax.random.normal(keys[2], (n, _NUM_IDS.value)),
        "modality_logits": jax.random.normal(keys[3], (n, 2)),
    }
    outputs = {k: v.astype(dtype) for k, v in outputs.items()}
    half = _IMAGES_PER_ID.value // 2
    modality = jnp.tile(
        jnp.repeat(jnp.array([0, 1]), half), _IDS_PER_BATCH.value
    )
    constants = {
        "labels": jax.random.permutation(keys[4], _NUM_IDS.value)[
            : _IDS_PER_BATCH.value
        ].repeat(_IMAGES_PER_ID.value),
        "modality": modality,
        "cameras": jax.random.randint(keys[5], (n,), 0, _NUM_CAMERAS.value),
        "id_centers": jax.random.normal(keys[6], (_NUM_IDS.value, _DIM.value)),
        "camera_centers": jax.random.normal(
            jax.random.fold_in(keys[6], 1), (_NUM_CAMERAS.value, _DIM.value)
        ),
    }
    return outputs, constants


def _loss_terms(outputs, constants):
    """Each loss of a training step, by name."""

    def aggregation(labels, centers):
        return losses.center_aggregation_loss(
            features=outputs["bn"],
            labels=labels,
            centers=centers,
            sigma=_SIGMA,
            rho=_RHO,
            variant=_VARIANT.value,
        )

    return {
        "identity": lambda: losses.identity_loss(
            logits=outputs["id_logits"], labels=constants["labels"]
        ),
        "wrt_triplet": lambda: losses.wrt_triplet_loss(
            features=outputs["pool"], labels=constants["labels"]
        ),
        "modality_confusion": lambda: losses.modality_confusion_loss(
            logits=outputs["modality_logits"]
        ),
        "modality_classifier": lambda: losses.modality_classifier_loss(
            logits=outputs["modality_logits"], modality=constants["modality"]
        ),
        "ica": lambda: (
            _LAMBDA * aggregation(constants["labels"], constants["id_centers"])
        ),
        "cca": lambda: (
            _LAMBDA
            * aggregation(constants["cameras"], constants["camera_centers"])
        ),
    }


def _all_losses(outputs, constants):
    return sum(term() for term in _loss_terms(outputs, constants).values())


def _one_loss(name):
    return lambda outputs, constants: _loss_terms(outputs, constants)[name]()


def _hard_triplet(outputs, constants):
    return losses.hard_triplet_loss(
        features=outputs["pool"], labels=constants["labels"]
    )


def _median_ms(fn, *args) -> float:
    """Median wall time of `fn(*args)` in ms, after compiling and warm-up."""
    jax.block_until_ready(fn(*args))
    for _ in range(_WARMUP.value):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv):
    del argv
    dtype = jnp.dtype(_DTYPE.value)
    outputs, constants = _make_batch(dtype)
    n = outputs["pool"].shape[0]
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}); batch {n} x {_DIM.value} {dtype.name}, "
        f"{_NUM_IDS.value} identity / {_NUM_CAMERAS.value} camera centers, "
        f"center variant {_VARIANT.value!r}; median of {_REPEATS.value} "
        "calls"
    )
    rows = [("all losses", _all_losses)]
    rows += [
        (name, _one_loss(name)) for name in _loss_terms(outputs, constants)
    ]
    rows += [("hard_triplet (Base ablation)", _hard_triplet)]
    print(f"{'':30s} {'forward ms':>11s} {'fwd+bwd ms':>11s}")
    for name, loss_fn in rows:
        forward = jax.jit(loss_fn)
        backward = jax.jit(jax.value_and_grad(loss_fn))
        print(
            f"{name:30s} {_median_ms(forward, outputs, constants):11.3f} "
            f"{_median_ms(backward, outputs, constants):11.3f}"
        )


if __name__ == "__main__":
    app.run(main)

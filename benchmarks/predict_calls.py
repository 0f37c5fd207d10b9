"""Predict calls per evaluated checkpoint in a run with val, test, raw pixels
and figures.

Runs the tiny synthetic demo (`synthetic:tiny=1`, 39 steps) with a
validation evaluator every 13 steps on the SYSU-style "val" split, the test
protocol, the raw-pixel protocol and the figures at the end, and counts every
pass of `features.extract_features` over a split (one pass embeds the whole
split) and every batch it embeds, by evaluated step and feature kind. Each
split is embedded once per evaluated state however many evaluators read it.

Usage::

    python benchmarks/predict_calls.py [--workdir=DIR]
"""

from __future__ import annotations

import collections
import tempfile

from absl import app, flags

from mclnet_jax import platform

platform.apply_cpu_defaults()

# Imported after the XLA flags are set.
from mclnet_jax import train  # noqa: E402
from mclnet_jax.configs import synthetic  # noqa: E402
from mclnet_jax.evaluators import features  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: tmp).")


def _config():
    config = synthetic.get_config("tiny=1")
    test = config.evals.test
    config.evals.val = dict(test.to_dict(), split="val", every_steps=13)
    config.evals.val.at_end = False
    config.evals.raw_pixels = dict(test.to_dict(), features="pixels")
    config.evals.figures.baseline = "raw_pixels"
    config.checkpoint.best_metric = "val/sysu_all_single_shot/bn/mean/mAP"
    return config


def main(argv):
    del argv
    calls = collections.Counter()
    extract = features.extract_features
    step = {"now": None}

    def counting(embed_fn, *, feature_names, **kwargs):
        kind = "pixels" if tuple(feature_names) == ("pixels",) else "model"
        calls[step["now"], kind, "passes"] += 1

        def counted(images, modality):
            calls[step["now"], kind, "batches"] += 1
            return embed_fn(images, modality)

        return extract(counted, feature_names=feature_names, **kwargs)

    features.extract_features = counting
    run_features = features.FeatureStore.features

    def features_at(self, split, kind, state):
        step["now"] = int(state.step)
        return run_features(self, split, kind, state)

    features.FeatureStore.features = features_at
    with tempfile.TemporaryDirectory() as tmp:
        train.train_and_evaluate(_config(), _WORKDIR.value or tmp)
    print("step  kind    passes  batches")
    for s in sorted({k[0] for k in calls}):
        for kind in ("model", "pixels"):
            if calls[s, kind, "passes"]:
                print(
                    f"{s:4d}  {kind:6s}  {calls[s, kind, 'passes']:6d}  "
                    f"{calls[s, kind, 'batches']:7d}"
                )


if __name__ == "__main__":
    app.run(main)

r"""Why (and whether) features transfer across modalities on synthetic data.

Trains the demo's network (configs/synthetic.py, any variant) on synthetic
SYSU-MM01-layout data held in memory (no files, no TFDS: fast enough for
sweeps), then measures on the unseen test identities:

* cross-modality retrieval with the SYSU protocol (all-search single-shot,
  10 trials), the number the demo reports;
* same-modality retrieval: visible queries against the other visible
  cameras, infrared camera 3 against camera 6 and back (single-shot
  galleries as in SYSU);
* a linear probe of the modality on `pool` and `bn` (logistic regression,
  2-fold cross-validation over identities) and the share of the feature
  variance that the modality means explain;
* cue sensitivity: every test identity A is re-rendered, with the same
  views, once with the colours (visible) / infrared signature (infrared) of
  another identity B and once with B's shared cues (shape, pattern,
  accessories) under A's colours / signature. The distance from A's
  original features to each hybrid, divided by the distance to B itself,
  says how much of the identity the features read from the
  modality-specific cues and how much from the shared ones (1: all, 0:
  none);
* the same SYSU protocol on raw pixels.

Every sweep knob is a flag; results are one JSON line on stdout (and
--out). Example (the demo's setting, shortened)::

    python benchmarks/transfer_diagnostics.py --steps=300
    python benchmarks/transfer_diagnostics.py --ids=400 --per_camera=4 \
        --size=64x32 --steps=600 --grey=0.5 --gen=pattern_scale=0.5
    # the same measurements on a finished demo (its checkpoint, its
    # generator's identities rendered afresh; no training):
    python benchmarks/transfer_diagnostics.py --from_workdir=/tmp/demo_0

The network, losses, optimiser, sampler and augmentation are the
repository's own (mclnet_jax.train_step, data_pipeline.augment/sampling); only
the storage differs from the demo (images stay in memory, JPEG round trip
optional with --jpeg).
"""

from __future__ import annotations

import functools
import io
import json
import sys
import time
import types

import numpy as np
from absl import app, flags

from data_pipeline import sampling, synthetic
from data_pipeline.constants import (
    SYSU_INDOOR_CAMERAS,
    SYSU_INFRARED_CAMERAS,
    SYSU_VISIBLE_CAMERAS,
)
from data_pipeline.records import SplitMetadata
from mclnet_jax import metrics as metrics_lib
from mclnet_jax.configs import common
from mclnet_jax.configs import synthetic as synthetic_recipe
from mclnet_jax.evaluators import features as features_lib
from mclnet_jax.evaluators import sysu

_FLAGS = (
    flags.DEFINE_enum(
        "variant", "mclnet", sorted(common.VARIANTS), "Ablation variant."
    ),
    flags.DEFINE_integer("ids", 160, "Identities generated."),
    flags.DEFINE_integer("per_camera", 6, "Images per identity and camera."),
    flags.DEFINE_string("size", "64x32", "Image size, HxW."),
    flags.DEFINE_integer("pad", 4, "Padding of the random crop."),
    flags.DEFINE_float("width", 0.25, "ResNet-18 width multiplier."),
    flags.DEFINE_integer("steps", 776, "Training steps."),
    flags.DEFINE_float(
        "decay_at", 0.75, "Fraction of the steps after which lr x 0.1."
    ),
    flags.DEFINE_float("lr", 0.1, "Learning rate (both optimisers)."),
    flags.DEFINE_float("erasing", 0.0, "Random erasing probability."),
    flags.DEFINE_float(
        "grey", 0.0, "Probability of a grey/channel visible image."
    ),
    flags.DEFINE_enum(
        "grey_mode", "grey", ["grey", "channel"], "What --grey applies."
    ),
    flags.DEFINE_integer("seed", 0, "Training seed."),
    flags.DEFINE_integer("data_seed", 0, "Generator seed."),
    flags.DEFINE_integer(
        "jpeg", 90, "JPEG quality of the round trip; 0: none."
    ),
    flags.DEFINE_multi_string(
        "gen", None, "Generator keyword k=v (repeatable)."
    ),
    flags.DEFINE_bool(
        "diagnostics", True, "Also same-modality, probe and cue results."
    ),
    flags.DEFINE_string("out", None, "Append the JSON line to this file."),
    flags.DEFINE_string(
        "from_workdir",
        None,
        "Measure the trained network of this demo workdir instead of "
        "training one (its generator's identities, freshly rendered).",
    ),
)
# Identity attributes that are *not* shared by the modalities.
_PALETTES = ("visible_palette", "infrared_palette")


def _parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _parse_gen(items) -> dict:
    """['k=v', ...] -> generator keyword arguments (numbers)."""
    out = {}
    for item in items or ():
        key, value = item.split("=", 1)
        out[key] = float(value) if "." in value or "e" in value else int(value)
    return out


# ---------------------------------------------------------------------------
# Data in memory.


def _jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    out = np.empty_like(images)
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def make_data(
    *,
    ids: int,
    per_camera: int,
    size: tuple[int, int],
    seed: int,
    jpeg: int,
    gen: dict,
) -> dict:
    """Renders every camera's images of `ids` identities (SYSU cameras).

    Returns:
      dict: "images" uint8 [N, H, W, 3], "identity" (1-based pid), "camera",
      "modality" [N] int64, "views" per camera, "attributes", "splits".
    """
    attributes = synthetic.sample_identities(ids, seed=seed, **gen)
    images, ident, cams, views_by_cam, cameras = [], [], [], {}, {}
    for cam in range(1, 7):
        infrared = cam in SYSU_INFRARED_CAMERAS
        camera = synthetic.make_camera(
            cam,
            infrared=infrared,
            outdoor=cam not in SYSU_INDOOR_CAMERAS,
            seed=seed,
        )
        rng = np.random.default_rng([seed, 2, cam])
        index = np.repeat(np.arange(ids), per_camera)
        views = synthetic.sample_views(camera, index.size, rng=rng)
        im = synthetic.render_camera(
            attributes,
            index,
            views,
            camera,
            height=size[0],
            width=size[1],
            rng=rng,
        )
        if jpeg:
            im = _jpeg(im, jpeg)
        images.append(im)
        ident.append(index + 1)
        cams.append(np.full(index.size, cam))
        views_by_cam[cam] = views
        cameras[cam] = camera
    camera = np.concatenate(cams)
    return {
        "images": np.concatenate(images),
        "identity": np.concatenate(ident).astype(np.int64),
        "camera": camera.astype(np.int64),
        "modality": np.isin(camera, SYSU_INFRARED_CAMERAS).astype(np.int64),
        "views": views_by_cam,
        "cameras": cameras,
        "attributes": attributes,
        "splits": synthetic.sysu_split(list(range(1, ids + 1)), seed=seed),
        "per_camera": per_camera,
        "seed": seed,
        "size": size,
        "jpeg": jpeg,
    }


# ---------------------------------------------------------------------------
# Training with the repository's step.


def make_config(args):
    """configs/synthetic.py with the sweep's overrides."""
    config = synthetic_recipe.get_config(args.variant)
    config.seed = args.seed
    config.data.image_size = _parse_size(args.size)
    config.data.pad = args.pad
    config.data.random_erasing = args.erasing
    config.model.width_multiplier = args.width
    d = 512 * args.width
    config.loss.sigma = 8.0 * d / 2048
    config.loss.rho = 4500.0 * d / 2048
    config.optimizer.lr = args.lr
    config.mcm_optimizer.lr = args.lr
    return config


def train(
    config,
    data: dict,
    *,
    steps: int,
    decay_at: float,
    grey: float,
    grey_mode: str,
    log_every: int = 100,
):
    """Trains on the train ids of `data`; returns (model, state, log)."""
    import jax
    import optax

    from data_pipeline import augment
    from data_pipeline.tf_setup import tf
    from mclnet_jax import train_step as train_lib

    tf.config.set_visible_devices([], "GPU")
    train_ids = np.asarray(data["splits"]["train"])
    keep = np.isin(data["identity"], train_ids)
    index = np.flatnonzero(keep)
    vis = index[data["modality"][index] == 0]
    ir = index[data["modality"][index] == 1]
    vis_lab = np.searchsorted(train_ids, data["identity"][vis])
    ir_lab = np.searchsorted(train_ids, data["identity"][ir])
    p, k = config.data.num_identities, config.data.num_instances
    spe = sampling.steps_per_epoch(
        num_visible=vis.size,
        num_infrared=ir.size,
        num_identities=p,
        num_instances=k,
    )
    model = train_lib.make_model(config, num_classes=train_ids.size)
    # The demo's SGD (one lr for all layers, as configs/synthetic.py) on a
    # step schedule: one decay (x0.1) at `decay_at` of the run, so that runs
    # of any length compare.
    schedule = optax.piecewise_constant_schedule(
        config.optimizer.lr, {int(decay_at * steps): 0.1}
    )
    oc = config.optimizer
    tx = optax.chain(
        optax.add_decayed_weights(oc.weight_decay),
        optax.sgd(schedule, momentum=oc.momentum, nesterov=oc.nesterov),
    )
    mcm_tx = optax.chain(
        optax.add_decayed_weights(config.mcm_optimizer.weight_decay),
        optax.sgd(
            config.mcm_optimizer.lr, momentum=oc.momentum, nesterov=oc.nesterov
        ),
    )
    state = train_lib.init_state(
        config,
        model=model,
        num_classes=train_ids.size,
        num_cameras=6,
        tx=tx,
        mcm_tx=mcm_tx,
        load_pretrained=False,
    )
    step_fn = jax.jit(
        train_lib.make_train_step(
            config, model=model, tx=tx, schedule=schedule, mcm_tx=mcm_tx
        )
    )
    aug = augment.TrainAugment(
        padding=config.data.pad, erasing_probability=config.data.random_erasing
    )
    h, w = config.data.image_size

    @tf.function(jit_compile=True)
    def augment_batch(images, seed):
        params = augment.sample_train_params(
            seed, num=2 * p * k, height=h, width=w, config=aug
        )
        x = augment.crop_and_flip(images, params, config=aug)
        if grey > 0:
            x = _grey_augment(tf, x, seed, grey, grey_mode, p * k)
        return augment.normalize_and_erase(x, params, config=aug)

    log = []
    plan, plan_epoch = None, -1
    t0 = time.process_time()
    for step in range(steps):
        epoch, b = divmod(step, spe)
        if epoch != plan_epoch:
            plan = sampling.epoch_plan(
                visible_labels=vis_lab,
                infrared_labels=ir_lab,
                seed=config.seed,
                epoch=epoch,
                num_identities=p,
                num_instances=k,
            )
            plan_epoch = epoch
        rows = np.concatenate([vis[plan.visible[b]], ir[plan.infrared[b]]])
        x = augment_batch(
            tf.constant(data["images"][rows]),
            augment.step_seed(config.seed, step),
        ).numpy()
        lab = np.searchsorted(train_ids, data["identity"][rows])
        batch = {
            "visible": x[: p * k],
            "infrared": x[p * k :],
            "visible_labels": lab[: p * k],
            "infrared_labels": lab[p * k :],
            "visible_cameras": data["camera"][rows[: p * k]],
            "infrared_cameras": data["camera"][rows[p * k :]],
        }
        state, m = step_fn(state, batch)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            m = {k_: float(v) for k_, v in jax.device_get(m).items()}
            log.append(
                {
                    "step": step + 1,
                    "loss_id": m["loss_id"],
                    "loss": m["loss"],
                    "cpu_s": time.process_time() - t0,
                }
            )
            print(json.dumps(log[-1]), file=sys.stderr, flush=True)
    return model, state, log


def _grey_augment(tf, x, seed, probability, mode, num_visible):
    """Visible rows (the first num_visible) -> grey or one channel, w.p."""
    s = tf.random.experimental.stateless_fold_in(seed, 7)
    u = tf.random.stateless_uniform([x.shape[0]], s, alg="philox")
    c = tf.random.stateless_uniform(
        [x.shape[0]], s + 1, minval=0, maxval=4, dtype=tf.int32, alg="philox"
    )
    xf = tf.cast(x, tf.float32)
    luma = tf.reduce_sum(
        xf * tf.constant([0.299, 0.587, 0.114]), -1, keepdims=True
    )
    if mode == "grey":
        one = luma
    else:  # "channel": R, G, B or luma, uniformly.
        chans = tf.concat([xf, luma], -1)
        one = tf.gather(chans, c, axis=3, batch_dims=1)[..., None]
    apply = (u < probability) & (tf.range(x.shape[0]) < num_visible)
    out = tf.where(apply[:, None, None, None], tf.repeat(one, 3, axis=-1), xf)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


# ---------------------------------------------------------------------------
# Measurements.


@functools.cache
def _predict_fn(model):
    """One jitted predict function per model for every `embed` call
    (`features.make_predict_fn` compiles anew each time it is called)."""
    return features_lib.make_predict_fn(model)


def embed(
    model, variables, images: np.ndarray, modality: np.ndarray, batch: int = 128
) -> dict:
    """{"pool", "bn"} features of uint8 images (eval transform)."""
    from data_pipeline import image_ops
    from data_pipeline.tf_setup import tf

    predict_fn = _predict_fn(model)
    out = {"pool": [], "bn": []}
    order = np.argsort(modality, kind="stable")
    for mod in (0, 1):
        idx = order[modality[order] == mod]
        for s in range(0, idx.size, batch):
            part = idx[s : s + batch]
            x = image_ops.normalize(tf.constant(images[part])).numpy()
            pad = batch - part.size
            if pad:
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            f = predict_fn(variables, x, mod)
            for name in out:
                out[name].append((part, np.asarray(f[name])[: part.size]))
    res = {}
    for name, chunks in out.items():
        feats = np.zeros((images.shape[0], chunks[0][1].shape[1]), np.float32)
        for part, f in chunks:
            feats[part] = f
        res[name] = feats
    return res


def _metadata(identity, camera, modality) -> SplitMetadata:
    names = np.array(
        [
            f"cam{c}/{i:04d}/{k:06d}.jpg"
            for k, (i, c) in enumerate(zip(identity, camera, strict=True))
        ],
        dtype=object,
    )
    return SplitMetadata(
        label=np.unique(identity, return_inverse=True)[1],
        identity=identity,
        camera=camera,
        modality=modality,
        file_name=names,
    )


def sysu_all(features: dict, meta) -> dict:
    """All-search single-shot R1 / mAP / mINP (%) per feature."""
    res = sysu.Sysu(meta, modes=("all",)).evaluate(features)
    summary = res.summary()
    out = {}
    for name in features:
        s = summary["sysu_all_single_shot"][name]["mean"]
        out[name] = {
            k: round(100 * float(s[k]), 2) for k in ("rank1", "mAP", "mINP")
        }
    return out


def same_modality(features: np.ndarray, meta, trials: int = 10) -> dict:
    """R1 / mAP (%) within each modality: query camera vs other cameras."""
    f = metrics_lib.l2_normalize(features)
    out = {}
    for name, qcams, gcams in (
        ("visible", SYSU_VISIBLE_CAMERAS, SYSU_VISIBLE_CAMERAS),
        ("infrared", SYSU_INFRARED_CAMERAS, SYSU_INFRARED_CAMERAS),
    ):
        r1, ap = [], []
        for t in range(trials):
            rng = np.random.default_rng(t)
            q = np.flatnonzero(np.isin(meta.camera, qcams))
            g = []
            for pid in np.unique(meta.identity):
                for c in gcams:
                    cand = np.flatnonzero(
                        (meta.identity == pid) & (meta.camera == c)
                    )
                    g.append(rng.choice(cand))
            g = np.asarray(g)
            # The query's own camera is removed for its identity.
            m = metrics_lib.standard_metrics(
                -f[q] @ f[g].T,
                query_ids=meta.identity[q],
                gallery_ids=meta.identity[g],
                query_cams=meta.camera[q],
                gallery_cams=meta.camera[g],
            )
            r1.append(m.cmc[0] * 100)
            ap.append(m.mAP * 100)
        out[name] = {
            "rank1": round(float(np.mean(r1)), 2),
            "mAP": round(float(np.mean(ap)), 2),
        }
    return out


def modality_probe(
    features: np.ndarray, identity: np.ndarray, modality: np.ndarray
) -> dict:
    """Modality probe accuracy (%) and between-modality variance share.

    Logistic regression on L2-normalised features, 2 folds over identities;
    the share is the variance of the two modality means over the total.
    """
    from sklearn.linear_model import LogisticRegression

    f = metrics_lib.l2_normalize(features)
    ids = np.unique(identity)
    half = np.isin(identity, ids[::2])
    acc = []
    for tr in (half, ~half):
        clf = LogisticRegression(max_iter=2000, C=1.0)
        clf.fit(f[tr], modality[tr])
        acc.append(clf.score(f[~tr], modality[~tr]))
    total = ((f - f.mean(0)) ** 2).sum(1).mean()
    between = sum(
        (modality == m).mean()
        * ((f[modality == m].mean(0) - f.mean(0)) ** 2).sum()
        for m in (0, 1)
    )
    return {
        "probe_accuracy": round(float(np.mean(acc)) * 100, 2),
        "modality_variance_share": round(float(between / total), 4),
    }


def cue_sensitivity(model, variables, data: dict, *, pairs: int = 64) -> dict:
    """Feature distance to hybrids / distance to the donor identity.

    For each test identity A (up to `pairs`) and a donor B, renders A's
    views of camera 1 (visible) and 3 (infrared) as A, as B, as A with B's
    palettes ("specific": colours / infrared signature) and as A with B's
    shared attributes (shape, pattern, accessories; A's palettes).
    """
    test = np.asarray(data["splits"]["test"]) - 1
    rng = np.random.default_rng(0)
    a_ids = test[:pairs]
    b_ids = rng.permutation(a_ids)
    b_ids = np.where(b_ids == a_ids, np.roll(a_ids, 1), b_ids)
    attrs = data["attributes"]
    h, w = data["size"]
    out = {}
    for cam in (1, 3):
        camera = data["cameras"][cam]
        views = {
            k: v[:: data["per_camera"]][a_ids]
            for k, v in data["views"][cam].items()
        }

        def render(ident, cam=cam, views=views, camera=camera):
            r = np.random.default_rng([data["seed"], 9, cam])
            im = synthetic.render(
                ident, views, camera, height=h, width=w, rng=r
            )
            return _jpeg(im, data["jpeg"]) if data["jpeg"] else im

        def gather(rows):
            return {k: v[rows] for k, v in attrs.items()}

        ga, gb = gather(a_ids), gather(b_ids)
        specific = dict(ga, **{k: gb[k] for k in _PALETTES})
        shared = dict(gb, **{k: ga[k] for k in _PALETTES})
        mod = int(cam in SYSU_INFRARED_CAMERAS)
        ims = np.concatenate([render(x) for x in (ga, gb, specific, shared)])
        f = embed(model, variables, ims, np.full(ims.shape[0], mod))
        n = a_ids.size
        res = {}
        for name in ("pool", "bn"):
            z = metrics_lib.l2_normalize(f[name]).reshape(4, n, -1)
            d = {
                k: np.linalg.norm(z[0] - z[i], axis=1)
                for k, i in (("donor", 1), ("specific", 2), ("shared", 3))
            }
            res[name] = {
                k: round(float(d[k].mean() / d["donor"].mean()), 3)
                for k in ("specific", "shared")
            }
        # The same on raw pixels.
        x = ims.reshape(4, n, -1).astype(np.float32) / 255.0
        d = {
            k: np.linalg.norm(x[0] - x[i], axis=1)
            for k, i in (("donor", 1), ("specific", 2), ("shared", 3))
        }
        res["pixels"] = {
            k: round(float(d[k].mean() / d["donor"].mean()), 3)
            for k in ("specific", "shared")
        }
        out["visible" if mod == 0 else "infrared"] = res
    return out


def _from_workdir(workdir: str, jpeg: int):
    """(model, variables, data) of a finished demo run: no training."""
    from mclnet_jax import embed as embed_lib

    config = embed_lib.read_workdir_config(workdir)
    synthetic_data = config.data.get("synthetic")
    if synthetic_data is None:
        # A run of benchmarks/ablation.py: the rows of a seed share data
        # generated with the demo's generator at that seed.
        demo = synthetic_recipe.get_config(f"seed={config.seed}")
        if config.data.dataset != demo.data.dataset or tuple(
            config.data.image_size
        ) != tuple(demo.data.image_size):
            raise ValueError(
                f"{workdir} is not a run on the synthetic demo's data "
                f"({config.data.dataset}, {tuple(config.data.image_size)}): "
                "--from_workdir measures configs/synthetic.py and "
                "benchmarks/ablation.py runs only."
            )
        synthetic_data = demo.data.synthetic
    gen = dict(synthetic_data["generator"])
    if gen["visible_images_per_camera"] != gen["infrared_images_per_camera"]:
        raise ValueError(
            f"{workdir}: --from_workdir needs as many images per visible as "
            "per infrared camera."
        )
    data = make_data(
        ids=gen["num_identities"],
        per_camera=gen["visible_images_per_camera"],
        size=(gen["height"], gen["width"]),
        seed=gen["seed"],
        jpeg=jpeg,
        gen={"pattern_scale": gen.get("pattern_scale", 1.0)},
    )
    loaded = embed_lib.load_model(workdir)
    return loaded.model, loaded.variables, data


def run(args) -> dict:
    t0 = time.process_time()
    training = {}  # Only when this run trains.
    if args.from_workdir:
        model, variables, data = _from_workdir(args.from_workdir, args.jpeg)
        gen_cpu = time.process_time() - t0
    else:
        data = make_data(
            ids=args.ids,
            per_camera=args.per_camera,
            size=_parse_size(args.size),
            seed=args.data_seed,
            jpeg=args.jpeg,
            gen=_parse_gen(args.gen),
        )
        gen_cpu = time.process_time() - t0
        model, state, log = train(
            make_config(args),
            data,
            steps=args.steps,
            decay_at=args.decay_at,
            grey=args.grey,
            grey_mode=args.grey_mode,
        )
        variables = state.model_variables()
        training = {
            "final_loss_id": log[-1]["loss_id"],
            "train_cpu_s": round(log[-1]["cpu_s"], 1),
        }
    test = np.isin(data["identity"], data["splits"]["test"])
    meta = _metadata(
        data["identity"][test], data["camera"][test], data["modality"][test]
    )
    feats = embed(model, variables, data["images"][test], meta.modality)
    x = data["images"][test].reshape(int(test.sum()), -1).astype(np.float32)
    result = {
        "args": vars(args),
        "test_ids": len(data["splits"]["test"]),
        "train_ids": len(data["splits"]["train"]),
        "chance_r1": round(100.0 / len(data["splits"]["test"]), 2),
        **training,
        "gen_cpu_s": round(gen_cpu, 1),
        "cross": sysu_all(feats, meta),
        "raw_pixels": sysu_all({"pixels": x / 255.0}, meta)["pixels"],
    }
    if args.diagnostics:
        result["same"] = {n: same_modality(f, meta) for n, f in feats.items()}
        result["probe"] = {
            n: modality_probe(f, meta.identity, meta.modality)
            for n, f in feats.items()
        }
        result["probe"]["pixels"] = modality_probe(
            x, meta.identity, meta.modality
        )
        result["cues"] = cue_sensitivity(model, variables, data)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = types.SimpleNamespace(**{f.name: f.value for f in _FLAGS})
    result = run(args)
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    app.run(main)

r"""MCLNet on RegDB with the paper's settings (ResNet-50, ImageNet init).

Run one trial (the paper reports the mean over trials 1..10):

  python -m mclnet_jax.main --config=configs/regdb.py:trial=1,variant=mclnet \
      --workdir=$HOME/runs/regdb_mclnet_t1 \
      --config.data.manual_dir=$HOME/datasets/RegDB \
      --config.model.pretrained=$HOME/weights/resnet50.safetensors

  for t in $(seq 1 10); do python -m mclnet_jax.main \
      --config=configs/regdb.py:trial=$t --workdir=$HOME/runs/regdb_t$t \
      --config.data.manual_dir=$HOME/datasets/RegDB \
      --config.model.pretrained=$HOME/weights/resnet50.safetensors; done

`manual_dir` holds Visible/, Thermal/ and idx/ (train_visible_{t}.txt, ...).
Both directions (visible->infrared, infrared->visible) are evaluated on the
trial's 206 test identities. results.json of each workdir holds the trial.

Arguments after the colon, comma-separated (a bare word is the variant):

  trial=T        1..10 (default 1): the TFDS config "trial_T".
  variant=NAME   ablation row (configs/default.py table), default mclnet.
                 As in the paper, CCA is not used on RegDB (one camera per
                 modality): every variant here has config.loss.cca = False.
"""

from mclnet_jax import config_utils


def _default():
    return config_utils.load_sibling(__file__, "default.py")


def get_config(arg=None):
    default = _default()
    args = default.parse_arg(arg, {"variant": "mclnet", "trial": 1})
    if not 1 <= args["trial"] <= 10:
        raise ValueError(f"trial must be in 1..10, got {args['trial']}.")
    config = default.get_config()
    default.apply_variant(config, args["variant"])
    config.loss.cca = False
    config.data.dataset = "regdb"
    config.data.builder_config = f"trial_{args['trial']}"
    config.data.train_split = "train"
    config.data.test_split = "test"
    config.eval.protocol = "regdb"
    return config

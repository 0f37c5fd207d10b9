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
  variant=NAME   ablation row (mclnet_jax/configs/common.py VARIANTS),
                 default mclnet. As in the paper, CCA is not used on RegDB
                 (one camera per modality): every variant here has
                 config.loss.cca = False.
"""

from mclnet_jax.configs import common, settings


def get_config(arg=None):
    return common.config_from_arg(settings.regdb, arg)

r"""MCLNet on SYSU-MM01 with the paper's settings (ResNet-50, ImageNet init).

Run (paper reproduction, final checkpoint reported, both search modes):

  python -m mclnet_jax.main --config=configs/sysu.py:mclnet \
      --workdir=$HOME/runs/sysu_mclnet \
      --config.data.manual_dir=$HOME/datasets/SYSU-MM01 \
      --config.model.pretrained=$HOME/weights/resnet50.safetensors

`manual_dir` holds cam1 .. cam6 and exp/ (train_id.txt, val_id.txt,
test_id.txt); the TFDS records are written once to ~/tensorflow_datasets
(--config.data.data_dir to change). `pretrained` is a torchvision ResNet-50
state dict saved with safetensors; it is required (the release's lr diverges
from random initialisation within a few steps; `--config.model.pretrained=
random` trains from scratch anyway). 201 epochs (the release's
`range(0, 201)`) of floor(22258 / 32) + 1 = 696 steps; the final checkpoint
is evaluated (the release kept the best on the test set; we never select on
test). Defaults reproduce the release; see the README's switch table.

Arguments after the colon, comma-separated (a bare word is the variant):

  variant=NAME   ablation row (mclnet_jax/configs/common.py VARIANTS): base,
                 base_mcm, base_ica_cca, agw, agw_mcm, agw_re (AGW*),
                 agw_re_mcm, agw_re_ica, agw_re_cca, agw_re_ica_cca,
                 mclnet (default).
  search=MODE    all (default), indoor, or both: the SYSU search mode(s)
                 evaluated; the first one selects the best checkpoint.
  val=1          model selection: train on the train ids only
                 ("train_only", 296 ids), evaluate the val ids ("val", 99)
                 every 5 epochs and keep the best checkpoint by bn mAP in
                 checkpoints_best/. The test split is never used for it.
                 Evaluate it with --mode=evaluate --checkpoint=best.

Examples: configs/sysu.py:base   configs/sysu.py:variant=agw_re,search=both
"""

from mclnet_jax.configs import common, settings


def get_config(arg=None):
    return common.config_from_arg(settings.sysu, arg)

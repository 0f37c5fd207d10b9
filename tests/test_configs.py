"""Tests of the recipes of configs/ (the package mclnet_jax.configs)."""

import os
import subprocess
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from mclnet_jax import config_checks, errors, main
from mclnet_jax.configs import common, regdb, synthetic, sysu

# ml_collections loads config files with the deprecated load_module().
pytestmark = pytest.mark.filterwarnings(
    "ignore:the load_module:DeprecationWarning"
)

_CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"
)

AGW_NL = (0, 2, 3, 0)
NO_NL = (0, 0, 0, 0)
# The paper's ablation rows, written out: the settings each variant gives.
# name: (triplet, pooling, non_local_counts, random_erasing, mcm, ica, cca)
EXPECTED = {
    "base": ("hard", "avg", NO_NL, 0.0, False, False, False),
    "base_mcm": ("hard", "avg", NO_NL, 0.0, True, False, False),
    "base_ica_cca": ("hard", "avg", NO_NL, 0.0, False, True, True),
    "agw": ("wrt", "gem", AGW_NL, 0.0, False, False, False),
    "agw_mcm": ("wrt", "gem", AGW_NL, 0.0, True, False, False),
    "agw_re": ("wrt", "gem", AGW_NL, 0.8, False, False, False),
    "agw_re_mcm": ("wrt", "gem", AGW_NL, 0.8, True, False, False),
    "agw_re_ica": ("wrt", "gem", AGW_NL, 0.8, False, True, False),
    "agw_re_cca": ("wrt", "gem", AGW_NL, 0.8, False, False, True),
    "agw_re_ica_cca": ("wrt", "gem", AGW_NL, 0.8, False, True, True),
    "mclnet": ("wrt", "gem", AGW_NL, 0.8, True, True, True),
    # Not a paper row: MCLNet with CAJ's channel augmentation, whose erasing
    # replaces the release's (tests/test_channel_aug.py).
    "mclnet_caj": ("wrt", "gem", AGW_NL, 0.0, True, True, True),
}


def _switches(config):
    return (
        config.loss.triplet,
        config.model.pooling,
        tuple(config.model.non_local_counts),
        config.data.random_erasing,
        config.loss.mcm,
        config.loss.ica,
        config.loss.cca,
    )


def _load(spec: str) -> ml_collections.ConfigDict:
    """`--config=configs/<spec>` as mclnet_jax.main parses it."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values)
    flag_values(["main", f"--config={os.path.join(_CONFIGS, spec)}"])
    return flag_values.config


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_variants_set_the_paper_rows(name):
    assert set(common.VARIANTS) == set(EXPECTED)
    config = common.apply_variant(sysu.get_config(), name)
    assert config.variant == name
    assert _switches(config) == EXPECTED[name]
    # The same from every recipe's file.
    from_file = _load(f"sysu.py:{name}")
    assert from_file.variant == name
    assert _switches(from_file) == EXPECTED[name]
    # RegDB has one camera per modality: no CCA in any variant.
    from_file = _load(f"regdb.py:variant={name}")
    assert _switches(from_file) == (*EXPECTED[name][:6], False)
    # The demo: at most one non-local block per stage, no random erasing.
    demo = _load(f"synthetic.py:{name}")
    triplet, pooling, non_local, _, mcm, ica, cca = EXPECTED[name]
    assert _switches(demo) == (
        triplet,
        pooling,
        tuple(min(c, 1) for c in non_local),
        0.0,
        mcm,
        ica,
        cca,
    )


def test_every_variant_sets_the_same_fields():
    fields = {frozenset(v) for v in common.VARIANTS.values()}
    assert len(fields) == 1
    # Applying a variant to any config undoes the previous one.
    config = common.apply_variant(sysu.get_config(), "base")
    common.apply_variant(config, "mclnet")
    assert config.to_dict() == sysu.get_config().to_dict()


def test_unknown_variant_and_override_name_the_choices():
    config = sysu.get_config()
    with pytest.raises(ValueError, match="'nope'.*agw_re_ica_cca"):
        common.apply_variant(config, "nope")
    with pytest.raises(ValueError, match="'loss.tripplet'.*'triplet'"):
        common.override(config, {"loss.tripplet": "wrt"})
    with pytest.raises(ValueError, match="config has no 'los'.*'loss'"):
        common.override(config, {"los": {"triplet": "wrt"}})
    with pytest.raises(ValueError, match="config.loss has no 'x'.*'mcm'"):
        common.override(config, {"loss": {"x": 1}})
    with pytest.raises(ValueError, match="config.loss.triplet has no fields"):
        common.override(config, {"loss.triplet.x": 1})
    # The failed overrides changed nothing.
    assert config.to_dict() == sysu.get_config().to_dict()


def test_override_dotted_and_nested():
    config = common.override(
        sysu.get_config(),
        {
            "loss.triplet": "hard",
            "model": {"pooling": "avg", "depth": 18},
            "data.synthetic": {"generator": {"seed": 3}},
        },
    )
    assert (config.loss.triplet, config.model.pooling) == ("hard", "avg")
    assert config.model.depth == 18
    assert config.data.synthetic.generator.seed == 3


def test_parse_arg():
    defaults = {"variant": "mclnet", "trial": 1, "val": False}
    assert common.parse_arg(None, **defaults).to_dict() == defaults
    assert common.parse_arg("", **defaults).to_dict() == defaults
    assert common.parse_arg("agw", **defaults).variant == "agw"
    assert common.parse_arg(" trial=3 , val=true,", **defaults).to_dict() == {
        "variant": "mclnet",
        "trial": 3,
        "val": True,
    }
    assert common.parse_arg("val=0", **defaults).val is False
    with pytest.raises(ValueError, match="'nope'.*'trial'"):
        common.parse_arg("nope=1", **defaults)
    with pytest.raises(ValueError, match="val must be true/false"):
        common.parse_arg("val=2", **defaults)
    with pytest.raises(ValueError, match="trial must be an integer"):
        common.parse_arg("trial=x", **defaults)


def test_config_files_work_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Every argument form the README and the config files document.
    assert _load("synthetic.py").to_dict() == synthetic.get_config().to_dict()
    for spec, expected in (
        ("sysu.py", sysu.get_config()),
        ("sysu.py:", sysu.get_config()),
        ("sysu.py:mclnet", sysu.get_config()),
        ("sysu.py:agw_re", sysu.get_config("agw_re")),
        (
            "sysu.py:variant=base,search=both",
            sysu.get_config("base,search=both"),
        ),
        ("sysu.py:variant=mclnet,val=1", sysu.get_config("val=1")),
        ("regdb.py:trial=1,variant=mclnet", regdb.get_config("trial=1")),
        ("regdb.py:trial=10", regdb.get_config("trial=10")),
        ("synthetic.py:base", synthetic.get_config("base")),
        ("synthetic.py:seed=1", synthetic.get_config("seed=1")),
        ("synthetic.py:tiny=1", synthetic.get_config("tiny=1")),
        ("synthetic.py:large=1", synthetic.get_config("large=1")),
    ):
        assert _load(spec).to_dict() == expected.to_dict(), spec


def test_recipe_names_resolve_to_the_packaged_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("sysu", "regdb", "synthetic"):
        argv = main.resolve_config(["main", f"--config={name}:base", "-x"])
        assert argv == [
            "main",
            f"--config={os.path.join(_CONFIGS, name)}.py:base",
            "-x",
        ]
    assert main.resolve_config(["main", "--config", "sysu"])[2] == (
        os.path.join(_CONFIGS, "sysu.py")
    )
    # Paths load as given.
    for path in ("configs/sysu.py:base", "my.py", "/a/b"):
        assert main.resolve_config(["m", f"--config={path}"])[1].endswith(path)
    with pytest.raises(errors.ConfigurationError, match="no recipe 'nosuch'"):
        main.resolve_config(["main", "--config=nosuch:tiny=1"])


def test_every_recipe_writes_every_field_and_passes_the_checks():
    def paths(tree, prefix=""):
        out = set()
        for key, value in tree.items():
            path = prefix + key
            # Evaluator entries and generated data differ by recipe.
            if isinstance(value, dict) and path not in (
                "evals",
                "data.synthetic",
            ):
                out |= paths(value, path + ".")
            else:
                out.add(path)
        return out

    configs = {
        spec: module.get_config(arg)
        for spec, module, arg in (
            ("sysu", sysu, None),
            ("sysu:val=1,search=both", sysu, "val=1,search=both"),
            ("regdb:trial=4", regdb, "trial=4"),
            ("synthetic", synthetic, None),
            ("synthetic:tiny=1", synthetic, "tiny=1"),
            ("synthetic:large=1", synthetic, "large=1"),
        )
    }
    reference = paths(sysu.get_config().to_dict())
    for spec, config in configs.items():
        assert paths(config.to_dict()) == reference, spec
        assert config_checks.problems(config) == [], spec
        for name, entry in config.evals.items():
            assert set(entry) == set(config_checks.ENTRY_FIELDS[entry.type]), (
                spec,
                name,
            )


def test_integer_fields_refuse_fractions_at_any_depth():
    # A config file may write a float where the recipes write an integer.
    fields = sysu.get_config().to_dict()
    fields["num_epochs"] = 2.5
    fields["data"]["pad"] = 0.5
    fields["checkpoint"]["keep"] = 1.5
    fields["evals"]["test"]["num_trials"] = 2.0
    assert config_checks.problems(ml_collections.ConfigDict(fields)) == [
        "config.num_epochs must be an integer >= 1, got 2.5.",
        "config.data.pad must be an integer >= 0, got 0.5.",
        "config.checkpoint.keep must be an integer >= 1, got 1.5.",
        "config.evals.test.num_trials must be an integer >= 1, got 2.0.",
    ]


def test_sysu_recipe():
    config = sysu.get_config()
    assert (config.data.dataset, config.data.builder_config) == (
        "sysu_mm01",
        "288x144",
    )
    assert set(config.evals) == {"test", "figures"}
    assert config.evals.test.type == "sysu"
    assert config.evals.test.modes == ("all",)
    assert (config.evals.figures.of, config.evals.figures.baseline) == (
        "test",
        "",
    )
    indoor = sysu.get_config("search=indoor")
    assert indoor.evals.test.modes == ("indoor",)
    both = sysu.get_config("search=both")
    assert both.evals.test.modes == ("all", "indoor")
    assert config.checkpoint.best_metric is None
    val = sysu.get_config("search=both,val=1")
    assert set(val.evals) == {"val", "test", "figures"}
    assert (val.data.train_split, val.evals.val.split) == ("train_only", "val")
    assert (val.evals.val.every_steps, val.evals.val.at_end) == (2610, False)
    assert val.evals.val.modes == ("all",)
    assert val.checkpoint.best_metric == "val/sysu_all_single_shot/bn/mean/mAP"
    with pytest.raises(ValueError, match="search must be one of"):
        sysu.get_config("search=outdoor")


def test_regdb_recipe():
    config = regdb.get_config("trial=3")
    assert (config.data.dataset, config.data.builder_config) == (
        "regdb",
        "trial_3",
    )
    assert config.evals.test.type == "regdb"
    assert "num_trials" not in config.evals.test  # One gallery per trial.
    for trial in (0, 11):
        with pytest.raises(ValueError, match="trial must be in 1..10"):
            regdb.get_config(f"trial={trial}")


def test_synthetic_recipe():
    demo = synthetic.get_config("seed=2")
    assert demo.seed == 2 and demo.data.synthetic.generator.seed == 2
    assert demo.data.synthetic.generator.num_identities == 260
    assert demo.data.image_size == (96, 48)
    assert (demo.model.depth, demo.model.width_multiplier) == (18, 0.25)
    # sigma and rho scaled by D / 2048, D = 512 * width.
    assert (demo.loss.sigma, demo.loss.rho) == (0.5, 281.25)
    assert demo.init.pretrained == "random"
    assert demo.data.random_grey == 0.5
    assert demo.evals.raw_pixels.features == "pixels"
    assert demo.evals.figures.baseline == "raw_pixels"
    assert demo.optimizer.lr_mults == ((".*", 1.0),)
    assert demo.num_epochs == 11
    assert demo.optimizer.schedule.boundaries == (8,)
    large = synthetic.get_config("large=1")
    assert large.data.image_size == (128, 64)
    assert large.data.synthetic.generator.num_identities == 491
    assert (large.loss.sigma, large.loss.rho) == (1.0, 562.5)
    assert (large.num_epochs, large.optimizer.schedule.warmup_epochs) == (30, 3)
    tiny = synthetic.get_config("tiny=1")
    assert tiny.data.image_size == (32, 16)
    assert tiny.model.width_multiplier == 1 / 16
    assert (tiny.loss.sigma, tiny.loss.rho) == (0.5, 281.25)
    assert (tiny.num_epochs, tiny.evals.test.num_trials) == (3, 2)
    assert set(tiny.evals) == {"test", "figures"}
    assert tiny.evals.figures.baseline == ""
    with pytest.raises(ValueError, match="tiny=1 and large=1"):
        synthetic.get_config("tiny=1,large=1")


def test_bad_config_arguments_name_the_problem():
    for spec, message in (
        ("sysu.py:nope", "Unknown variant 'nope'"),
        ("sysu.py:foo=1", "Unknown config argument 'foo'"),
        ("regdb.py:trial=x", "trial must be an integer"),
        ("synthetic.py:tiny=1,large=1", "exclude each other"),
    ):
        with pytest.raises(flags.IllegalFlagValueError, match=message):
            _load(spec)


@pytest.mark.parametrize(
    "flag, says",
    [
        ("--config=sysu:nope", "ERROR: --config: Unknown variant 'nope'; "),
        (
            "--config.data.pads=1",
            "override names no field of the config: 'pads'\nDid you mean "
            '"pad"',
        ),
    ],
)
def test_a_bad_recipe_argument_or_field_exits_2_with_one_message(
    tmp_path, flag, says
):
    # The command line: the recipe's own message, no traceback, nothing made.
    proc = subprocess.run(
        [sys.executable, "-m", "mclnet_jax.main", "--config=sysu", flag]
        + [f"--workdir={tmp_path / 'w'}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == errors.USER_ERROR, proc.stderr[-2000:]
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()

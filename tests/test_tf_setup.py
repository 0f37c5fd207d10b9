"""TensorFlow in the input pipeline never sees a GPU or TPU (tf_setup)."""

import ast
import pathlib
from unittest import mock

import pytest

from data_pipeline import tf_setup

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Our packages and scripts; tests may import TensorFlow as they like.
SOURCE_DIRS = ("data_pipeline", "mclnet_jax")


def test_pipeline_modules_leave_tf_no_accelerator():
    from data_pipeline import (  # noqa: F401 (imported for their effect)
        augment,
        datasets,
        eval_pipeline,
        image_ops,
        records,
        train_pipeline,
    )

    tf = tf_setup.tf
    assert tf.config.get_visible_devices("GPU") == []
    assert tf.config.get_visible_devices("TPU") == []
    assert tf.config.get_visible_devices("CPU")
    # Still true once TensorFlow's runtime has started.
    assert int(tf.constant(2) + 1) == 3
    assert tf_setup.hide_accelerators() == ["GPU", "TPU"]


def test_hide_accelerators_hides_gpu_and_tpu():
    with mock.patch.object(
        tf_setup.tf.config, "set_visible_devices"
    ) as set_visible:
        assert tf_setup.hide_accelerators() == ["GPU", "TPU"]
    assert set_visible.call_args_list == [
        mock.call([], "GPU"),
        mock.call([], "TPU"),
    ]


def test_hide_accelerators_after_initialisation_warns_and_goes_on():
    def set_visible(devices, device_type):
        del devices
        if device_type == "GPU":
            raise RuntimeError(
                "Visible devices cannot be modified after being initialized"
            )

    with (
        mock.patch.object(
            tf_setup.tf.config, "set_visible_devices", side_effect=set_visible
        ) as patched,
        mock.patch.object(tf_setup.logging, "warning") as warning,
    ):
        assert tf_setup.hide_accelerators() == ["TPU"]
    assert patched.call_count == 2
    warning.assert_called_once()
    message = warning.call_args.args[0] % warning.call_args.args[1:]
    assert "GPU" in message
    assert "cannot be modified after being initialized" in message
    assert "data_pipeline.tf_setup" in message


def test_hide_accelerators_other_errors_propagate():
    with (
        mock.patch.object(
            tf_setup.tf.config,
            "set_visible_devices",
            side_effect=ValueError("Unrecognized device"),
        ),
        pytest.raises(ValueError, match="Unrecognized device"),
    ):
        tf_setup.hide_accelerators()


def _tensorflow_imports(path: pathlib.Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(n == "tensorflow" or n.startswith("tensorflow.") for n in names):
            lines.append(node.lineno)
    return lines


def test_tensorflow_is_imported_only_through_tf_setup():
    offenders = []
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            if path == ROOT / "data_pipeline" / "tf_setup.py":
                continue
            offenders += [
                f"{path.relative_to(ROOT)}:{line}"
                for line in _tensorflow_imports(path)
            ]
    assert not offenders, (
        "import TensorFlow as `from data_pipeline.tf_setup import tf`: "
        f"{offenders}"
    )

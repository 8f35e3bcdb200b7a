"""ctx.describe(...) refuses what the package, the server and the validation could not use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlbuild.runtime.train import Context


def ctx(tmp_path: Path) -> Context:
    return Context({"params": {}, "seed": 0, "device": "cpu", "datasets": {}}, tmp_path)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"task": "Regression", "input_shape": [10]}, "task 'Regression' is not one mlbuild knows; use 'classification' or 'regression'"),
    ({"task": "classify", "input_shape": [10]}, "task 'classify' is not one"),
    ({"input_shape": 10}, "input_shape must be a list of positive ints (or -1 for any size), one per dimension of a row"),
    ({"input_shape": []}, "input_shape must be a list"),
    ({"input_shape": [0]}, "got [0]"),
    ({"input_shape": [64], "labels": "0123"}, "labels must be a list of class names (strings), got '0123'"),
    ({"input_shape": [64], "labels": [0, 1]}, "labels must be a list of class names"),
    ({"task": "regression", "input_shape": [10], "labels": ["a"]}, "a regression model has none (drop labels=)"),
    ({"input_shape": [6], "datatype": "fp32"}, "datatype 'fp32' is not a datatype mlbuild serves; use 'FP32'"),
    ({"input_shape": [6], "datatype": "BYTES"}, "(tensors of numbers and booleans; BYTES, strings, is not); use one of"),
    ({"input_shape": [6], "datatype": "float32"}, "use one of BOOL, UINT8"),
    ({"input_shape": [6], "input_name": ""}, "input_name must be a non-empty string"),
    # two inputs: "input_shape must be a list of positive ints", not that mlbuild serves one input
    ({"input_shape": [[64], [3]]}, "input_shape=[[64], [3]] describes several inputs, but a model served by mlbuild "
                                   "has one input tensor; join the inputs into one row (e.g. input_shape=[67]"),
    ({"input_shape": [8, 8], "input_name": ["image", "meta"]}, "input_name=['image', 'meta'] describes several inputs"),
    ({"input_shape": [8], "datatype": ("FP32", "INT64")}, "datatype=('FP32', 'INT64') describes several inputs"),
    # feedback by name, the v1 "class" and a suite's named targets took the first of the two
    ({"input_shape": [4], "labels": ["cat", "dog", "cat"]}, "labels names 'cat' for more than one class; give each"),
])
def test_bad_descriptions_are_refused_with_the_fix(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SystemExit) as e:
        ctx(tmp_path).describe(**kwargs)
    assert message in str(e.value.code)


def test_good_descriptions_give_the_signature(tmp_path: Path) -> None:
    c = ctx(tmp_path)
    c.describe(task="regression", input_shape=[10])
    assert c.signature["task"] == "regression" and c.signature["labels"] is None
    assert c.signature["outputs"] == [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]
    c.describe(input_shape=(1, 8, 8), labels=("a", "b"))
    assert c.signature["task"] == "classification" and c.signature["labels"] == ["a", "b"]
    assert c.signature["inputs"][0]["shape"] == [-1, 1, 8, 8]
    assert c.signature["outputs"][0]["shape"] == [-1, 2]


def test_describe_takes_the_datatypes_the_server_does() -> None:
    from mlbuild.runtime.serve.package import DATATYPES
    from mlbuild.runtime.train import DATATYPES as TRAIN_DATATYPES
    assert TRAIN_DATATYPES == tuple(DATATYPES)


def test_save_reference_takes_the_tensors_training_has(tmp_path: Path) -> None:
    """A bfloat16 batch failed with numpy's "Got unsupported ScalarType BFloat16", and one that
    requires grad with "Can't call numpy() on Tensor that requires grad"."""
    import numpy as np
    import torch

    x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    expected = ctx(tmp_path)
    expected.save_reference(x.numpy())
    for given in (x.bfloat16(), x.clone().requires_grad_(), x.half()):
        c = ctx(tmp_path)
        c.save_reference(given)
        assert c.reference == expected.reference
    assert np.asarray(expected.reference["mean"]).tolist() == [19.0, 20.0]

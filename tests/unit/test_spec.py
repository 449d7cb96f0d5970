"""The input spec and its translations: torch.export Dims, ONNX dim names, seeded inputs."""

from __future__ import annotations

import numpy as np

from kiln.config import DimSpec, InputSpec
from kiln.spec import Signature, batch_dim, parity_points, random_inputs, torch_dynamic_shapes

SIG = Signature(
    (
        InputSpec(name="ids", shape=["batch", "seq"], dtype="int64", range=(0, 9)),
        InputSpec(name="img", shape=["batch", 3, 4, 4]),
    ),
    {"batch": DimSpec(min=1, opt=4, max=32), "seq": DimSpec(min=2, max=16)},
)


def test_shape_at_each_point_uses_the_dim_range() -> None:
    assert SIG.shape(SIG.inputs[0], "min") == (1, 2)
    assert SIG.shape(SIG.inputs[0], "opt") == (4, 2)  # opt defaults to min
    assert SIG.shape(SIG.inputs[1], "max") == (32, 3, 4, 4)
    assert SIG.shape_range(SIG.inputs[1]) == [(1, 32), (3, 3), (4, 4), (4, 4)]


def test_example_sizes_avoid_specializing_dims_at_one() -> None:
    sig = Signature(SIG.inputs, {"batch": DimSpec(min=1, opt=1, max=8), "seq": DimSpec(min=1, max=1)})
    assert sig.example_sizes() == {"batch": 2, "seq": 1}


def test_torch_dynamic_shapes_share_one_dim_object_per_name() -> None:
    shapes = torch_dynamic_shapes(SIG)
    assert set(shapes[0]) == {0, 1} and set(shapes[1]) == {0}
    assert shapes[0][0] is shapes[1][0]
    assert (shapes[0][0].min, shapes[0][0].max) == (1, 32)


def test_static_dims_are_not_dynamic() -> None:
    sig = Signature(SIG.inputs, {"batch": DimSpec(min=4, max=4), "seq": DimSpec(min=8, max=8)})
    assert torch_dynamic_shapes(sig) == ({}, {})
    assert parity_points(sig) == ["opt"]
    assert parity_points(SIG) == ["min", "opt", "max"]


def test_random_inputs_are_seeded_and_respect_dtype_and_range() -> None:
    a, b = random_inputs(SIG, "max", seed=3), random_inputs(SIG, "max", seed=3)
    assert a["ids"].dtype == np.int64 and a["ids"].min() >= 0 and a["ids"].max() <= 9
    assert a["img"].dtype == np.float32 and a["img"].shape == (32, 3, 4, 4)
    np.testing.assert_array_equal(a["img"], b["img"])
    assert random_inputs(SIG, sizes={"batch": 5})["img"].shape[0] == 5


def test_signature_round_trips_through_json() -> None:
    sig = Signature(SIG.inputs, SIG.dims, ("out",))
    assert Signature.from_dict(sig.to_dict()) == sig
    assert batch_dim(sig) == "batch"

"""Every graph stage reads constants and attributes through ``graph.node_values``: each form an
exporter writes (an initializer, a Constant's ``value`` tensor, its ``value_ints``/``value_float``
forms) gives the same array, and weights kept as external data are not read."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnx_nfi.graph.node_values import attr, attributes, constants, str_attr


def _graph() -> helper.GraphProto:
    external = numpy_helper.from_array(np.zeros(3, np.float32), "far")
    external.data_location = TensorProto.EXTERNAL
    nodes = [
        helper.make_node("Constant", [], ["tensor"], value=numpy_helper.from_array(np.array([1, 2, 3], np.int64))),
        helper.make_node("Constant", [], ["ints"], value_ints=[1, -1, 4, 4]),
        helper.make_node("Constant", [], ["float"], value_float=0.5),
        helper.make_node("Resize", ["x", "", "float"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric"),
    ]
    return helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w"), external],
    )


def test_every_constant_form_is_read_and_external_weights_are_not() -> None:
    values = constants(_graph())
    assert sorted(values) == ["float", "ints", "tensor", "w"]
    assert values["tensor"].tolist() == [1, 2, 3] and values["tensor"].dtype == np.int64
    assert values["ints"].tolist() == [1, -1, 4, 4]
    assert float(values["float"]) == 0.5
    assert values["w"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_only_the_named_constants_are_converted() -> None:
    assert sorted(constants(_graph(), {"ints", "w", "x"})) == ["ints", "w"]


def test_attributes_by_name_as_python_values() -> None:
    resize = _graph().node[3]
    assert attributes(resize) == {"mode": b"nearest", "coordinate_transformation_mode": b"asymmetric"}
    assert attr(resize, "mode") == b"nearest" and attr(resize, "cubic_coeff_a") is None
    assert str_attr(resize, "coordinate_transformation_mode", "half_pixel") == "asymmetric"
    assert str_attr(resize, "nearest_mode", "round_prefer_floor") == "round_prefer_floor"

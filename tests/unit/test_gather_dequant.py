"""gather_before_dequantize: a per-tensor INT8 embedding table is gathered in int8 and only the
rows looked up are dequantized; the values are the same, other users keep their dequantized
table, per-channel tables are left alone."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsify.export.gather_dequant import gather_before_dequantize  # noqa: E402

TABLE = np.random.default_rng(0).integers(-128, 128, (50, 8)).astype(np.int8)


def model(scale=np.float32(0.05), extra_matmul=False, axis=None):
    inits = [numpy_helper.from_array(TABLE, "table_q"),
             numpy_helper.from_array(np.asarray(scale, np.float32), "scale"),
             numpy_helper.from_array(np.zeros(np.shape(scale), np.int8), "zero")]
    dq = helper.make_node("DequantizeLinear", ["table_q", "scale", "zero"], ["table"], name="dq",
                          **({"axis": axis} if axis is not None else {}))
    nodes = [dq, helper.make_node("Gather", ["table", "ids"], ["rows"], name="gather", axis=0)]
    outputs = [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [2, 3, 8])]
    if extra_matmul:  # a tied output projection reads the whole table
        nodes.append(helper.make_node("MatMul", ["rows", "table_t"], ["logits"], name="mm"))
        nodes.insert(1, helper.make_node("Transpose", ["table"], ["table_t"], name="t"))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3, 50]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "ids", TensorProto.INT64, [2, 3])], outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(m):
    ids = np.array([[1, 5, 49], [0, 0, 7]], np.int64)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids})


@pytest.mark.parametrize("extra", [False, True])
def test_rows_are_gathered_in_int8_with_the_same_values(extra):
    before = model(extra_matmul=extra)
    expected = run(before)
    after = model(extra_matmul=extra)
    assert gather_before_dequantize(after) == 1
    onnx.checker.check_model(after)
    for got, want in zip(run(after), expected):
        assert np.array_equal(got, want)
    ops = [(n.op_type, list(n.input)) for n in after.graph.node]
    assert ("Gather", ["table_q", "ids"]) in ops  # the int8 table is gathered
    dequantized = [i for op, i in ops if op == "DequantizeLinear"]
    # the whole table is dequantized only where another node still reads it
    assert (["table_q", "scale", "zero"] in dequantized) == extra
    assert any(i[0] == "rows_int8_rows" for i in dequantized)


def test_a_per_channel_table_is_left_alone():
    m = model(scale=np.full(8, 0.05, np.float32), axis=1)
    assert gather_before_dequantize(m) == 0
    assert [n.op_type for n in m.graph.node] == ["DequantizeLinear", "Gather"]

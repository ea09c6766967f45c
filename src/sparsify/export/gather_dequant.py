"""Gather embedding rows before dequantizing them, not after.

A per-tensor INT8 embedding table exports as ``DequantizeLinear(int8 table) -> Gather(rows)``:
ONNX Runtime dequantizes the whole table on every call (MiniLM's 30522 x 384 words: 27% of a
3-layer INT8 model's time at batch 1 x 128 tokens, ``bench/profile_onnx.py``). Gathering the int8
rows first and dequantizing only those gives the same values (dequantization is elementwise with
one scale and zero point), for the cost of the rows looked up.
"""

from __future__ import annotations

from typing import Any


def gather_before_dequantize(model: Any) -> int:
    """Rewrite every ``DequantizeLinear(initializer, per-tensor scale) -> Gather(data)`` of
    ``model`` (an ``onnx.ModelProto``, in place) as ``Gather(int8 initializer) ->
    DequantizeLinear``. A DequantizeLinear that also feeds other nodes stays for them.

    Returns:
        The number of Gather nodes rewritten.
    """
    from onnx import helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def per_tensor(dq: Any) -> bool:
        if dq.input[0] not in initializers or len(dq.input) < 2:
            return False
        scale = initializers.get(dq.input[1])
        return scale is not None and all(d == 1 for d in scale.dims)

    replacement: dict[int, list[Any]] = {}
    dropped: set[int] = set()
    count = 0
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or not per_tensor(dq):
            continue
        users = consumers.get(dq.output[0], [])
        gathers = [g for g in users if g.op_type == "Gather" and g.input[0] == dq.output[0]
                   and list(g.input).count(dq.output[0]) == 1]
        for gather in gathers:
            rows = f"{gather.output[0]}_int8_rows"
            new_gather = helper.make_node("Gather", [dq.input[0], gather.input[1]], [rows],
                                          name=f"{gather.name}_int8")
            new_gather.attribute.extend(gather.attribute)
            new_dq = helper.make_node("DequantizeLinear", [rows, *dq.input[1:]],
                                      [gather.output[0]], name=f"{gather.name}_dequantize")
            replacement[id(gather)] = [new_gather, new_dq]
            count += 1
        if gathers and len(gathers) == len(users) and not any(
                o.name == dq.output[0] for o in graph.output):
            dropped.add(id(dq))
    if not count:
        return 0
    nodes = []
    for node in graph.node:
        if id(node) in dropped:
            continue
        nodes.extend(replacement.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    return count

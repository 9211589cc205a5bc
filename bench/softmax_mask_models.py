#!/usr/bin/python3
"""Writes the two ONNX graphs that bench/peers_softmax_mask.c runs in ONNX
Runtime: a masked softmax as ONNX expresses it (Softmax-13 has no mask
input), every dimension symbolic.

    softmax_mask_models.py OUT_DIR

  softmax_add.onnx   Y = Softmax(Add(X, M), axis=-1); X [R,N], M [MR,N]
                     (MR = 1: one mask row for every row, broadcast)
  softmax_where.onnx Y = Softmax(Where(K, X, -inf), axis=-1); K bool [MR,N]
                     (true = keep, as libattn's bool_mask)

Needs Debian's python3-onnx (as ../shared/peers/make_models.py).
"""
import os
import sys

import onnx
from onnx import TensorProto, helper

F = TensorProto.FLOAT


def save(nodes, inputs, name, out, inits=()):
    g = helper.make_graph(nodes, name, inputs,
                          [helper.make_tensor_value_info("Y", F, ["R", "N"])],
                          initializer=list(inits))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # opset 13's IR
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(out, name))


def main(out):
    x = helper.make_tensor_value_info("X", F, ["R", "N"])
    save([helper.make_node("Add", ["X", "M"], ["Z"]),
          helper.make_node("Softmax", ["Z"], ["Y"], axis=-1)],
         [x, helper.make_tensor_value_info("M", F, ["MR", "N"])], "softmax_add.onnx", out)
    save([helper.make_node("Where", ["K", "X", "NEG_INF"], ["Z"]),
          helper.make_node("Softmax", ["Z"], ["Y"], axis=-1)],
         [x, helper.make_tensor_value_info("K", TensorProto.BOOL, ["MR", "N"])],
         "softmax_where.onnx", out,
         [helper.make_tensor("NEG_INF", F, [], [float("-inf")])])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])

"""sparsify: sparse transfer learning with SparseML-compatible recipes, INT8 ONNX export."""

__version__ = "0.1.0"

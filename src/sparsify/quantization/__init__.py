"""Quantization-aware training (QAT): fold BatchNorm, insert fake quantization.

The placement of fake quantization decides whether ONNX Runtime runs the exported graph with
integer kernels or with float arithmetic plus conversion overhead (see
``docs/INT8_EXPORT.md``). The rules followed here are ONNX Runtime's QDQ fusion rules:

* ``Conv``: DequantizeLinear on input, weight and int32 bias **and** QuantizeLinear on the output
  (after a ReLU/ReLU6 when one follows) → ``QLinearConv``.
* ``Linear``: DequantizeLinear on input and weight → ``MatMulIntegerToFloat`` / ``QGemm``; with
  a QuantizeLinear on the output as well → ``QLinearMatMul`` / ``QGemm`` with integer output.
* residual ``Add``: both inputs quantized and its output quantized (by the ReLU after it, or,
  for a block that returns the sum as MobileNetV2's inverted residuals do, by a
  ``residual_output_quant`` on the block's output) → ``QLinearAdd``; global average pooling
  → ``QLinearGlobalAveragePool``; max pooling and flattening keep the quantization
  parameters of their input, so ONNX Runtime runs them on integers.

How it is done, and what it means for parameter names (pruning masks are keyed by them):

* Quantized modules keep their object identity and their place in the module tree; only their
  class is switched to a subclass defined in :mod:`~sparsify.quantization.modules`
  (``nn.Conv2d`` → :class:`QATConv2d`, which still ``isinstance`` of ``nn.Conv2d``).
  **Parameter names do not change**: ``layer1.0.conv1.weight`` stays
  ``layer1.0.conv1.weight`` and is the same ``nn.Parameter`` object, so masks, optimizer
  state and ``__ALL_PRUNABLE__`` selectors keep working. Fake-quantizers are added as child
  modules holding buffers only (``<module>.input_quant``, ``<module>.weight_quant``,
  ``<module>.output_quant``), so they appear in ``state_dict`` but never among parameters.
* During QAT a BatchNorm after a conv keeps training beside it; BatchNorm folding
  (:func:`fold_qat_batchnorm_`, at the end of QAT and before export) multiplies the conv
  weight in place (same Parameter object, zeros stay zero) and re-uses the BatchNorm's
  ``bias`` Parameter as the conv's bias: ``layer1.0.bn1.bias`` becomes ``layer1.0.conv1.bias``
  (the same object, so an optimizer that held it keeps training it). The BatchNorm module is
  replaced by ``nn.Identity``, so its ``weight``/``bias``/running statistics disappear from
  ``named_parameters``/``state_dict``. A BatchNorm with its activation inside (timm's
  ``BatchNormAct2d``) is folded the same way; its activation stays in its place (a
  ReLU/ReLU6 moves into the conv before the output quantization, as for a separate ReLU
  module).
* Quantized activations are tracked by tagging the fake-quantized output tensor, so a tensor is
  quantized once by its producer and every consumer re-uses the same QuantizeLinear.

Exporting: fake quantization is exported by the legacy TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``) as QuantizeLinear/DequantizeLinear pairs (see
:mod:`~sparsify.quantization.fake_quant`); :func:`sparsify.export.export_onnx` then folds the
constant weight quantization into int8 initializers.

The modules, by role:

* ``config``: :class:`QuantizationConfig` and the integer grids;
* ``fake_quant``: the fake-quantization ops and the quantizer modules;
* ``tagging``: which quantizer produced a tensor;
* ``modules``: the QAT module classes swapped in, :class:`QATModule` their marker base;
* ``batchnorm``: folding a BatchNorm into its QAT conv;
* ``graph``: ``torch.fx`` pattern analysis (Conv → BatchNorm, fusable ReLUs, residual sums);
* ``prepare``: :func:`prepare_qat_` and the switches used during QAT.
"""

from __future__ import annotations

from sparsify.quantization import fake_quant, modules, prepare
from sparsify.quantization.batchnorm import fold_qat_batchnorm_, has_unfolded_qat_batchnorm
from sparsify.quantization.config import QuantizationConfig
from sparsify.quantization.fake_quant import FakeQuantizer, WeightFakeQuantizer
from sparsify.quantization.graph import conv_bn_pairs
from sparsify.quantization.modules import (
    QATAdaptiveAvgPool2d,
    QATAvgPool2d,
    QATBatchNorm1d,
    QATBatchNorm2d,
    QATBatchNorm3d,
    QATConv1d,
    QATConv2d,
    QATConv3d,
    QATEmbedding,
    QATFlatten,
    QATLinear,
    QATMaxPool2d,
    QATModule,
    QATReLU,
    QATReLU6,
    QATSiLU,
)
from sparsify.quantization.prepare import (
    disable_observers_,
    enable_observers_,
    freeze_bn_stats_,
    is_qat_prepared,
    prepare_qat_,
    quantized_module_names,
)
from sparsify.quantization.tagging import tag_of

__all__ = [
    "QuantizationConfig",
    "FakeQuantizer",
    "WeightFakeQuantizer",
    "conv_bn_pairs",
    "fold_qat_batchnorm_",
    "freeze_bn_stats_",
    "has_unfolded_qat_batchnorm",
    "prepare_qat_",
    "disable_observers_",
    "enable_observers_",
    "is_qat_prepared",
    "quantized_module_names",
    "tag_of",
    *modules.__all__,  # the QAT module classes
]

# The private names of the single module this package replaced, for code and pickles that use
# them (``torch.save`` of a prepared model names the residual-sum forward hook
# ``sparsify.quantization._quantize_residual_output``).
_QATModule = QATModule
_tag_of = tag_of
_quantize_residual_output = prepare._quantize_residual_output
_BiasQDQ = fake_quant._BiasQDQ
_QATWeightedMixin = modules._QATWeightedMixin
_QATConvMixin = modules._QATConvMixin
_QATBatchNormMixin = modules._QATBatchNormMixin
_QATActivationMixin = modules._QATActivationMixin
_QATRequantMixin = modules._QATRequantMixin
_QATAvgPoolMixin = modules._QATAvgPoolMixin


def __getattr__(name: str) -> type:
    # The QAT classes made at run time for BatchNorm subclasses (timm's BatchNormAct2d ->
    # QATBatchNormAct2d) live in ``modules``; models pickled before the split name them
    # ``sparsify.quantization.<name>``.
    cls = getattr(modules, name, None) if name.startswith("QAT") else None
    if isinstance(cls, type):
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

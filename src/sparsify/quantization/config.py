"""The quantization scheme: :class:`QuantizationConfig` and the integer grids it implies."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["QuantizationConfig"]

# Activations are unsigned 8 bit (asymmetric), weights signed 8 bit storage (symmetric): the
# u8 x s8 combination is what ONNX Runtime's x86 integer kernels are built for.
_ACT_QMIN, _ACT_QMAX = 0, 255
_W_QMIN, _W_QMAX = -128, 127
# int32 bias: keep away from the int32 limits so that float32 rounding cannot overflow.
_INT32_SAFE = float(2**31 - 256)
_EPS = 1e-12


@dataclass
class QuantizationConfig:
    """What :func:`prepare_qat_` quantizes and how.

    The scheme is fixed to what ONNX Runtime runs fast on x86 CPUs: weights symmetric per
    output channel (per tensor for embeddings), activations asymmetric per tensor (uint8).

    Attributes:
        weight_bits: bits of the weight grid (recipe ``weight_bits``), 2-8. Weights are stored
            as int8 whatever the value; fewer bits only narrow the grid.
        activation_bits: bits of activations (recipe ``activation_bits``). Only 8 is supported:
            ONNX ``QuantizeLinear`` saturates at the full uint8 range, so a narrower grid in
            PyTorch would not match ONNX Runtime.
        weight_quant_range_7bit: with ``weight_bits == 8`` use the grid -63..63 instead of
            -127..127. CPUs with AVX2 but without VNNI saturate u8 x s8 products in ONNX
            Runtime, which makes INT8 outputs drift 2-5 % of the logit range from PyTorch's
            fake quantization; 7-bit weights remove the drift (INT8_EXPORT.md pitfall 2).
            Default True because that is this project's target CPU; set False for VNNI/AVX-512
            or GPU targets.
        reduce_range: SparseML's recipe flag. Here it only forces 7-bit weights (like
            ``weight_quant_range_7bit``); activations are never reduced, because ONNX cannot
            express a 0..127 activation grid without an extra Clip that breaks ONNX Runtime's
            fusions.
        exclude_module_types: class names (``type(m).__name__``) never quantized, e.g.
            ``["LayerNorm", "Tanh"]`` (recipe ``exclude_module_types``).
        submodules: module-name prefixes to quantize (recipe ``submodules``); ``None`` means the
            whole model. ``"bert.encoder"`` selects ``bert.encoder`` and everything below it.
        ignore: module names (prefixes, as for ``submodules``) or class names not to quantize
            (newer recipe key ``ignore``).
        quantize_embeddings: fake-quantize ``nn.Embedding`` weights (per tensor, symmetric, so
            ONNX Runtime can gather from the int8 table).
        quantize_linear_activations: fake-quantize the *output* of ``nn.Linear`` layers. Their
            inputs are always quantized (that is what makes the MatMul integer). Without it
            ONNX Runtime produces ``MatMulIntegerToFloat``/``QGemm`` with float output.
        quantize_conv_activations: fake-quantize the output of convolutions, and of the
            ReLU/ReLU6/pooling/flatten modules between them. Without it convolutions cannot
            become ``QLinearConv`` (ONNX Runtime needs the output QuantizeLinear).
        fold_batchnorm: quantize each Conv followed by a BatchNorm as the folded pair
            (INT8_EXPORT.md pitfall 5). During QAT the BatchNorm keeps training (batch
            statistics, running averages updated until :func:`freeze_bn_stats_`) and the conv's
            weight is fake-quantized in its folded form ``w * gamma / sqrt(running_var + eps)``;
            :func:`fold_qat_batchnorm_` (called at finalize and by the export) then folds the
            pair into one conv whose weights lie on the same grid. Folding at QAT start instead
            made training unstable (bench/bench_image_classification.py: top-1 0.92 -> 0.38
            the epoch after QAT started). ``False`` leaves BatchNorm float and the convs before
            it unquantized.
        averaging_constant: weight of a new batch in the moving-average min/max of the
            activation observers (PyTorch's default for QAT is 0.01).
    """

    weight_bits: int = 8
    activation_bits: int = 8
    weight_quant_range_7bit: bool = True
    reduce_range: bool = False
    exclude_module_types: list[str] = field(default_factory=list)
    submodules: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    quantize_embeddings: bool = True
    quantize_linear_activations: bool = True
    quantize_conv_activations: bool = True
    fold_batchnorm: bool = True
    averaging_constant: float = 0.01

    def __post_init__(self) -> None:
        if not 2 <= int(self.weight_bits) <= 8:
            raise ValueError(
                f"weight_bits={self.weight_bits} is not supported; valid: 2..8 "
                "(weights are stored as int8)."
            )
        if int(self.activation_bits) != 8:
            raise ValueError(
                f"activation_bits={self.activation_bits} is not supported; valid: 8. ONNX "
                "QuantizeLinear saturates at the uint8 range, so other widths would not match "
                "ONNX Runtime."
            )
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ValueError(
                f"averaging_constant={self.averaging_constant} must be in (0, 1]."
            )

    @property
    def weight_qmax(self) -> int:
        """Largest weight grid value; the grid is symmetric, ``-weight_qmax..weight_qmax``."""
        bits = int(self.weight_bits)
        if bits == 8 and (self.weight_quant_range_7bit or self.reduce_range):
            bits = 7
        return 2 ** (bits - 1) - 1

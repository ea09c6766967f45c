"""Quantization-aware training, configured by SparseML's legacy keys or its newer scheme keys."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from sparsify.modifiers.base import Event, Modifier, ModifierState

logger = logging.getLogger(__name__)

LEGACY_KEYS = ("submodules", "exclude_module_types", "quantize_embeddings",
               "quantize_linear_activations", "quantize_conv_activations", "activation_bits",
               "weight_bits", "num_calibration_steps", "custom_quantizable_module_types",
               "model_fuse_fn_name")
NEW_KEYS = ("scheme", "scheme_overrides", "ignore")
#: SparseML's names: default / conv_bn_relus fold conv+bn(+relu); no_fuse keeps BatchNorm.
FUSE_FN_NAMES = (None, "conv_bn_relus", "fuse_module", "no_fuse")


@dataclass(kw_only=True)
class QuantizationModifier(Modifier):
    """INT8 QAT from ``start_epoch`` to the end of training (it cannot be switched off).

    Weights: symmetric per channel; activations: asymmetric per tensor. CNNs get conv-bn folded
    first. Observers freeze at ``disable_quantization_observer_epoch``.
    """

    # legacy keys
    submodules: list[str] | None = None
    exclude_module_types: list[str] | None = None
    quantize_embeddings: bool = True
    quantize_linear_activations: bool = True
    quantize_conv_activations: bool = True
    activation_bits: int = 8
    weight_bits: int = 8
    num_calibration_steps: int | None = None
    custom_quantizable_module_types: list[str] | None = None
    model_fuse_fn_name: str | None = None
    # both
    disable_quantization_observer_epoch: float | None = None
    freeze_bn_stats_epoch: float | None = None
    reduce_range: bool = False
    # newer keys
    scheme: Any = None
    scheme_overrides: dict[str, Any] | None = None
    ignore: list[str] | None = None

    epoch_fields: ClassVar[tuple[str, ...]] = (
        "start_epoch", "end_epoch", "disable_quantization_observer_epoch",
        "freeze_bn_stats_epoch")
    until_end: ClassVar[bool] = True
    cost_phase: ClassVar[str | None] = "qat"

    def validate(self) -> None:
        if self.end_epoch != -1:
            raise ValueError("end_epoch: quantization runs to the end of training; remove "
                             "end_epoch (or set it to -1)")
        legacy = [k for k in LEGACY_KEYS if getattr(self, k) != _DEFAULTS[k]]
        new = [k for k in NEW_KEYS if getattr(self, k) is not None]
        if legacy and new:
            raise ValueError(f"{new[0]}: newer-style keys ({', '.join(new)}) cannot be mixed "
                             f"with legacy keys ({', '.join(legacy)})")
        for name in ("activation_bits", "weight_bits"):
            bits = getattr(self, name)
            if bits != 8:
                raise ValueError(f"{name}: only 8-bit quantization exports to INT8 ONNX, got {bits}")
        for name in ("submodules", "exclude_module_types", "custom_quantizable_module_types",
                     "ignore"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, list)
                                      or not all(isinstance(v, str) for v in value)):
                raise ValueError(f"{name}: must be a list of names, got {value!r}")
        for name in ("disable_quantization_observer_epoch", "freeze_bn_stats_epoch"):
            value = getattr(self, name)
            if value is not None and value != -1 and self.start_epoch != -1 \
                    and value < self.start_epoch:
                raise ValueError(f"{name}: {value} is before start_epoch {self.start_epoch}")
        if self.scheme is not None:
            self._scheme_config()  # raises on a bad scheme
        if self.scheme_overrides is not None:
            if not isinstance(self.scheme_overrides, dict):
                raise ValueError("scheme_overrides: must map module types or names to a scheme")
            for target, scheme in self.scheme_overrides.items():
                if scheme not in (None, "default", "W8A8"):
                    raise ValueError(
                        f"scheme_overrides: '{target}' asks for its own scheme; only null (do not "
                        "quantize it) or 'default' can be exported as INT8 here")
        if self.custom_quantizable_module_types:
            raise ValueError("custom_quantizable_module_types: quantizing custom module types is "
                             "not supported; Conv, Linear, Embedding and their activations are "
                             "quantized (remove the field)")
        if self.model_fuse_fn_name not in FUSE_FN_NAMES:
            raise ValueError(f"model_fuse_fn_name: '{self.model_fuse_fn_name}' is not one of "
                             f"{', '.join(str(n) for n in FUSE_FN_NAMES)}")

    def last_epoch(self) -> float:
        epochs = [self.start_epoch, self.disable_quantization_observer_epoch or 0.0,
                  self.freeze_bn_stats_epoch or 0.0, 0.0]
        return max(e for e in epochs if e is not None)

    # --- configuration -----------------------------------------------------------------------
    def _scheme_config(self) -> dict[str, Any]:
        """Check a newer-style ``scheme`` and return it as a dict (``default`` = INT8 as above)."""
        if self.scheme in (None, "default", "W8A8"):
            return {}
        if not isinstance(self.scheme, dict):
            raise ValueError(f"scheme: must be 'default' or a mapping, got {self.scheme!r}")
        for part, spec in self.scheme.items():
            if part not in ("input_activations", "weights", "output_activations"):
                raise ValueError(f"scheme: unknown part '{part}' (valid: input_activations, "
                                 "weights, output_activations)")
            if spec is None:
                continue
            if not isinstance(spec, dict):
                raise ValueError(f"scheme.{part}: must be a mapping or null")
            bits = spec.get("num_bits", 8)
            if bits != 8:
                raise ValueError(f"scheme.{part}.num_bits: only 8 bits export to INT8 ONNX")
            strategy = spec.get("strategy", "tensor")
            if strategy not in ("tensor", "channel"):
                raise ValueError(f"scheme.{part}.strategy: '{strategy}' is not tensor/channel")
        return dict(self.scheme)

    def quantization_config(self, float_modules: list[str] | None = None) -> Any:
        """The ``sparsify.quantization.QuantizationConfig`` these fields describe, with the
        trainer's ``float_modules`` (module names) ignored as well."""
        from sparsify.quantization import QuantizationConfig

        exclude = list(self.exclude_module_types or [])
        ignore = list(self.ignore or []) + list(float_modules or [])
        ignore += [t for t, v in (self.scheme_overrides or {}).items() if v is None]
        scheme = self._scheme_config()
        linear_out = self.quantize_linear_activations
        if scheme.get("output_activations", "absent") is None:
            linear_out = False
        return QuantizationConfig(
            submodules=self.submodules,
            exclude_module_types=exclude + [i for i in ignore if i[:1].isupper() and "." not in i],
            ignore=[i for i in ignore if not (i[:1].isupper() and "." not in i)],
            quantize_embeddings=self.quantize_embeddings,
            quantize_linear_activations=linear_out,
            quantize_conv_activations=self.quantize_conv_activations,
            reduce_range=self.reduce_range,
            fold_batchnorm=self.model_fuse_fn_name != "no_fuse",
        )

    # --- hooks -------------------------------------------------------------------------------
    def on_start(self, state: ModifierState, event: Event) -> None:
        from sparsify.quantization import prepare_qat_

        prepare_qat_(state.model, self.quantization_config(state.float_modules))
        state.structure_version += 1
        state.quantized = True
        logger.info("Quantization-aware training starts at epoch %.2f", event.epoch)
        if self.num_calibration_steps:
            logger.warning("num_calibration_steps=%s: observers calibrate on the QAT training "
                           "steps themselves; no separate calibration pass is run",
                           self.num_calibration_steps)
        self._observers_frozen = False
        self._bn_frozen = False

    def on_restructure(self, state: ModifierState) -> None:
        from sparsify.quantization import prepare_qat_

        prepare_qat_(state.model, self.quantization_config(state.float_modules))
        state.structure_version += 1
        state.quantized = True
        # a resumed run freezes observers and BatchNorm again at its first event, on these
        # new modules (the freezes are module flags, not state-dict entries)
        self._observers_frozen = False
        self._bn_frozen = False

    def on_event(self, state: ModifierState, event: Event) -> None:
        from sparsify.quantization import disable_observers_, freeze_bn_stats_

        epoch = event.epoch
        freeze_at = self.disable_quantization_observer_epoch
        if not self._observers_frozen and freeze_at not in (None, -1) and epoch >= freeze_at:
            disable_observers_(state.model)
            self._observers_frozen = True
            logger.info("Quantization observers frozen at epoch %.2f", epoch)
        bn_at = self.freeze_bn_stats_epoch
        if not self._bn_frozen and bn_at not in (None, -1) and epoch >= bn_at:
            n = freeze_bn_stats_(state.model)
            self._bn_frozen = True
            logger.info("BatchNorm statistics of %d layers frozen at epoch %.2f", n, epoch)

    def on_finalize(self, state: ModifierState) -> None:
        if self.started:
            from sparsify.quantization import fold_qat_batchnorm_

            if fold_qat_batchnorm_(state.model):
                state.structure_version += 1


_DEFAULTS = {k: QuantizationModifier.__dataclass_fields__[k].default for k in LEGACY_KEYS}

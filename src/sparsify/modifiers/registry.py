"""Modifier names (as recipes spell them) -> ``"module:Class"``, imported on lookup."""

from __future__ import annotations

import importlib

from sparsify.errors import did_you_mean

MODIFIERS: dict[str, str] = {
    "EpochRangeModifier": "sparsify.modifiers.schedule:EpochRangeModifier",
    "LearningRateFunctionModifier": "sparsify.modifiers.schedule:LearningRateFunctionModifier",
    "SetLearningRateModifier": "sparsify.modifiers.schedule:SetLearningRateModifier",
    "LearningRateModifier": "sparsify.modifiers.schedule:LearningRateModifier",
    "SetWeightDecayModifier": "sparsify.modifiers.schedule:SetWeightDecayModifier",
    "TrainableParamsModifier": "sparsify.modifiers.schedule:TrainableParamsModifier",
    "LayerPruningModifier": "sparsify.modifiers.layer_pruning:LayerPruningModifier",
    "ChannelPruningModifier": "sparsify.modifiers.channel_pruning:ChannelPruningModifier",
    "FFNPruningModifier": "sparsify.modifiers.ffn_pruning:FFNPruningModifier",
    "ConstantPruningModifier": "sparsify.modifiers.pruning:ConstantPruningModifier",
    "GMPruningModifier": "sparsify.modifiers.pruning:GMPruningModifier",
    "MagnitudePruningModifier": "sparsify.modifiers.pruning:MagnitudePruningModifier",
    "GlobalMagnitudePruningModifier": "sparsify.modifiers.pruning:GlobalMagnitudePruningModifier",
    "OBSPruningModifier": "sparsify.modifiers.obs:OBSPruningModifier",
    "QuantizationModifier": "sparsify.modifiers.quantization:QuantizationModifier",
    "DistillationModifier": "sparsify.modifiers.distillation:DistillationModifier",
    "PerLayerDistillationModifier":
        "sparsify.modifiers.layer_distillation:PerLayerDistillationModifier",
}


def modifier_class(name: str) -> type:
    """The class registered under ``name``.

    Raises:
        KeyError: with a did-you-mean message when the name is unknown.
    """
    if name not in MODIFIERS:
        raise KeyError(f"unknown modifier '{name}'.{did_you_mean(name, MODIFIERS)} "
                       f"Supported: {', '.join(MODIFIERS)}")
    module, _, cls = MODIFIERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)

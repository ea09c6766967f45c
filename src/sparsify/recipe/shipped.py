"""Which shipped recipe prunes a dense model gradually, per recipe family (pure, no torch).

Second-order (OBS) pruning for image classification: on EfficientNet-Lite0 its global ranking
stayed within 1.5 points of the dense fine-tune in all 4 measured runs (Fashion-MNIST, 3 seeds:
mean -0.3; digits: -1.1), magnitude pruning in 2 of 4 (Fashion-MNIST mean -1.3), at 1.5% more
training time. Magnitude pruning (``<family>_gmp``) for the others: on MiniLM OBS ended level
with it for 39% more training time. On tiny data (updates fewer than half a Fisher block of
steps apart) the OBS modifier prunes by magnitude: an update of ResNet-18's 11M weights costs
tens of training steps on CPU (bench/bench_obs_update.py). Figures and commands:
docs/benchmarks.md.
"""

from __future__ import annotations

#: ``{recipe family: shipped recipe}`` where it is not ``<family>_gmp``.
GRADUAL_RECIPES = {"image_classification": "image_classification_obs"}


def gradual_recipe(family: str) -> str:
    """The shipped recipe that prunes a dense model of ``family`` gradually (+ QAT)."""
    return GRADUAL_RECIPES.get(family, f"{family}_gmp")


def is_gradual_recipe(name: str) -> bool:
    """Whether a shipped recipe prunes a dense model gradually (its target sparsity is the
    plan's)."""
    return name.endswith("_gmp") or name in GRADUAL_RECIPES.values()

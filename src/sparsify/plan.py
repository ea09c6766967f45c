"""The plan: use case + optim level (+ optional model / recipe) -> what a run will do.

Pure functions over the tables in ``usecases.py`` and ``data/catalog.yaml``; no torch, no
network. ``locate_model`` is the one function that looks at the file system (local zoo folders),
so that ``--dry-run`` can say where the model would come from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsify.errors import OptimLevelError, TrainKwargsError, UsageError, did_you_mean
from sparsify.plan_shrink import describe_shrink, shrinks
from sparsify.recipe.shipped import gradual_recipe, is_gradual_recipe
from sparsify.usecases import UseCase
from sparsify.zoo.catalog import CatalogEntry, catalog_entry, find_entries_by_stub
from sparsify.zoo.stub import is_stub, parse_stub

#: A model counts as already sparse above this fraction of exact zeros in its prunable weights.
SPARSE_MODEL_THRESHOLD = 0.05


@dataclass(frozen=True)
class Band:
    """One optim-level band (OPTIM_LEVELS.md)."""

    label: str
    tier: str
    pruned: bool
    quantized: bool


BANDS = (
    Band("0.0", "largest", False, False),
    Band("(0.0, 0.25)", "largest", False, True),
    Band("[0.25, 0.5)", "largest", True, True),
    Band("[0.5, 0.75)", "medium", True, True),
    Band("[0.75, 1.0]", "smallest", True, True),
)


def parse_optim_level(value: str | float | int) -> float:
    """Read an optim level: a float in [0, 1], or an integer percentage in (1, 100].

    Raises:
        OptimLevelError: not a number, NaN, negative, above 100, or a non-integer above 1.
    """
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        raise OptimLevelError(
            f"Invalid optim level '{text}': not a number. Valid: a float in [0, 1] "
            "(e.g. 0.5) or an integer percentage in (1, 100] (e.g. 50)."
        ) from None
    if math.isnan(number) or number < 0:
        raise OptimLevelError(
            f"Invalid optim level '{text}': it must be in [0, 1] (or a percentage in (1, 100])."
        )
    if number <= 1.0:
        return number
    if number <= 100 and number == int(number):
        return number / 100.0
    raise OptimLevelError(
        f"Invalid optim level '{text}': above 1 only integer percentages up to 100 are read "
        f"(e.g. 50 = 0.5). Valid: a float in [0, 1] or an integer in (1, 100]."
    )


def band_for_level(level: float) -> Band:
    """The band that holds ``level`` (already parsed into [0, 1])."""
    if level == 0.0:
        return BANDS[0]
    if level < 0.25:
        return BANDS[1]
    if level < 0.5:
        return BANDS[2]
    if level < 0.75:
        return BANDS[3]
    return BANDS[4]


def target_sparsity_for_level(level: float) -> float:
    """Target sparsity of the pruned bands: 0.70 at 0.25 rising linearly to 0.95 at 1.0.

    0.5 (the default) gives 0.78 and 0.75 gives 0.87; the bands that do not prune give 0.
    """
    if not band_for_level(level).pruned:
        return 0.0
    return round(0.70 + 0.25 * (level - 0.25) / 0.75, 2)


#: the target sparsity of a model the plan also shrinks structurally (the default level's):
#: ONNX Runtime skips no zeros, so the speed of levels >= 0.75 comes from the removed layers or
#: channels, and a higher target there traded accuracy for size only (MiniLM at 1.0: 2 layers
#: at 95% lost 19 points; EfficientNet-Lite0 at half width and 95%: 49; docs/benchmarks.md)
SHRUNK_TARGET_SPARSITY = 0.78


def keep_layers_for_level(level: float) -> float | None:
    """Share of a user's NLP model's encoder layers kept at the smallest tier: 1/2 (12 layers
    -> 6, MiniLM's 6 -> 3); ``None`` below 0.75 (the model keeps its depth). Above 0.75 the
    feed-forward width goes instead (:func:`keep_ffn_for_level`): on MiniLM-L6 at level 1.0,
    3 layers with a quarter of the FFN were more accurate and faster than 2 full layers
    (docs/benchmarks.md)."""
    if band_for_level(level).tier != "smallest":
        return None
    return 0.5


def keep_ffn_for_level(level: float) -> float | None:
    """Share of each kept layer's feed-forward channels at the smallest tier: 1 at 0.75 falling
    linearly to 1/4 at 1.0 (``FFNPruningModifier`` through ``keep_ffn``; MiniLM 1536 -> 384);
    ``None`` where nothing is narrowed (below 0.75, and at 0.75 itself)."""
    if band_for_level(level).tier != "smallest" or level <= 0.75:
        return None
    return round(1.0 - (level - 0.75) * 3, 4)


def keep_channels_for_level(level: float) -> float | None:
    """Share of the conv output channels of a user's image-classification model kept at the
    smallest tier: 3/4 at 0.75 falling linearly to 1/2 at 1.0 (``ChannelPruningModifier``
    through the recipe's ``keep_channels``); ``None`` below 0.75 (the model keeps its width)."""
    if band_for_level(level).tier != "smallest":
        return None
    return round(0.75 - (level - 0.75), 4)


def scheme_name(band: Band) -> str:
    """``dense FP32``, ``INT8`` or ``pruned + INT8``."""
    if band.pruned:
        return "pruned + INT8"
    return "INT8" if band.quantized else "dense FP32"


def recipe_family(use_case: UseCase) -> str:
    """Shipped recipes exist per family: image_classification, detection (+ segmentation), nlp."""
    if use_case.catalog_family in ("detection", "segmentation"):
        return "detection"
    return use_case.catalog_family


def choose_recipe(use_case: UseCase, band: Band, model_is_sparse: bool) -> str:
    """Name of the shipped recipe for a band and a starting model.

    - no pruning, no quantization: ``<family>_finetune``
    - quantization only: ``<family>_quant``
    - pruning, model already sparse: ``<family>_transfer`` (constant masks + QAT)
    - pruning, dense model: gradual pruning + QAT (:func:`~sparsify.recipe.shipped.gradual_recipe`:
      ``image_classification_obs``, ``<family>_gmp`` for the others)
    """
    family = recipe_family(use_case)
    if not band.pruned:
        return f"{family}_quant" if band.quantized else f"{family}_finetune"
    return f"{family}_transfer" if model_is_sparse else gradual_recipe(family)


@dataclass
class ModelChoice:
    """Where the starting model comes from.

    Attributes:
        spec: what ``--model`` said, or the catalog stub.
        origin: ``user`` (``--model``) or ``catalog``.
        location: a human-readable description of the source to be used.
        local_path: a local file/folder when one is known without downloading.
        expected_sparsity: the catalog's sparsity for the source, ``None`` when only loading
            the model can tell (a user's model).
        entry: the catalog entry used (``None`` for a user's model).
    """

    spec: str
    origin: str
    location: str
    local_path: str | None = None
    expected_sparsity: float | None = None
    entry: CatalogEntry | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What one ``sparse-transfer`` run will do."""

    use_case: UseCase
    optim_level: float
    band: Band
    target_sparsity: float
    model: ModelChoice
    recipe: str
    recipe_origin: str
    recipe_args: dict[str, Any]
    train_kwargs: dict[str, Any]
    teacher: str
    device: str
    seed: int
    eval_metric: str
    notes: list[str] = field(default_factory=list)

    @property
    def scheme(self) -> str:
        return scheme_name(self.band)

    @property
    def shrink(self) -> str | None:
        """What the run removes structurally (the recipe's ``keep_layers`` / ``keep_ffn`` /
        ``keep_channels``), or why nothing at the smallest tier; ``None`` elsewhere."""
        entry = self.model.entry
        return describe_shrink(
            self.recipe_args, smallest=self.band.tier == "smallest",
            family=recipe_family(self.use_case), user_model=self.model.origin == "user",
            architecture=entry.architecture if entry else "model")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``plan.yaml`` and ``--dry-run``."""
        entry = self.model.entry
        return {
            "use_case": self.use_case.id,
            "sparsify_name": self.use_case.sparsify_name,
            "domain": self.use_case.domain,
            "optim_level": self.optim_level,
            "band": self.band.label,
            "tier": self.band.tier,
            "scheme": self.scheme,
            "pruned": self.band.pruned,
            "quantized": self.band.quantized,
            "target_sparsity": self.target_sparsity,
            **({"shrink": self.shrink} if self.shrink is not None else {}),
            "model": {
                "spec": self.model.spec,
                "origin": self.model.origin,
                "source": self.model.location,
                "local_path": self.model.local_path,
                "expected_sparsity": self.model.expected_sparsity,
                "architecture": entry.architecture if entry else None,
                "catalog_stub": entry.stub if entry else None,
            },
            "recipe": {"name": self.recipe, "origin": self.recipe_origin,
                       "args": dict(self.recipe_args)},
            "teacher": self.teacher,
            "train_kwargs": dict(self.train_kwargs),
            "eval_metric": self.eval_metric,
            "device": self.device,
            "seed": self.seed,
            "notes": list(self.model.notes) + list(self.notes),
        }


def _local_choice(spec: str, origin: str, entry: CatalogEntry | None,
                  sparsity: float | None) -> ModelChoice | None:
    """A choice for ``spec`` when it is on this machine now (local zoo, SparseZoo cache, or a
    remote source's cache), else ``None``. No network."""
    from sparsify.zoo.resolve import LOADABLE_ORIGINS, locate_local

    found = locate_local(spec)
    if found is None:
        return None
    entry = entry or found.entry
    if sparsity is None and entry is not None:
        sparsity = entry.sparsity
    loadable = found.origin in LOADABLE_ORIGINS
    return ModelChoice(spec, origin, found.describe(), str(found.path) if loadable else None,
                       sparsity, entry)


def locate_model(use_case: UseCase, band: Band, model: str | None) -> ModelChoice:
    """Choose the starting model: the user's ``--model`` or the catalog entry for the band.

    Looks only at this machine (local zoo folders, the SparseZoo cache, the caches of the
    remote sources); never at the network.
    """
    if model:
        path = Path(model).expanduser()
        if path.exists() and not is_stub(model):
            return ModelChoice(model, "user", f"local path {path.resolve()}", str(path.resolve()))
        if is_stub(model):
            stub = parse_stub(model)
            matches = find_entries_by_stub(stub.without_query)
            entry = matches[0] if matches else None
            local = _local_choice(model, "user", entry, None)
            if local:
                return local
            return ModelChoice(model, "user", "zoo stub (local zoo, SparseZoo cache, then "
                               "catalog mirrors; resolved at run time)",
                               expected_sparsity=entry.sparsity if entry else None, entry=entry)
        local = _local_choice(model, "user", None, None)
        if local:
            return local
        return ModelChoice(model, "user", "model name (torchvision / Hugging Face Hub / "
                           "Ultralytics; resolved at run time)")

    variant = "sparse" if band.pruned else "dense"
    entry = catalog_entry(use_case.catalog_family, band.tier, variant)
    local = _local_choice(entry.stub, "catalog", entry, entry.sparsity)
    if local:
        return local
    if entry.sources:
        return ModelChoice(entry.stub, "catalog", str(entry.sources[0]), None,
                           entry.sparsity, entry)
    if entry.fallback:
        dense = catalog_entry(use_case.catalog_family, band.tier, entry.fallback)
        note = (f"{entry.stub} is not in a local zoo or SparseZoo cache; using the dense "
                f"{dense.architecture} instead and pruning it gradually")
        choice = (_local_choice(dense.stub, "catalog", dense, dense.sparsity)
                  or ModelChoice(dense.stub, "catalog", str(dense.sources[0]), None,
                                 dense.sparsity, dense))
        choice.notes.append(note)
        return choice
    raise AssertionError(f"catalog entry {entry.stub} has no source and no fallback")


# --- --train-kwargs -------------------------------------------------------------------------


def parse_train_kwargs(text: str | None, use_case: UseCase) -> dict[str, Any]:
    """Parse ``--train-kwargs`` (a JSON object) and check it against the settings of
    ``use_case``'s trainer family (:mod:`sparsify.families`).

    Raises:
        TrainKwargsError: not a JSON object, a key that family's trainer does not read (valid
            ones listed), a value of the wrong type or out of range.
    """
    from sparsify.families import check_train_kwargs
    from sparsify.recipe.args import json_object

    if not text:
        return {}
    value = json_object(text, "--train-kwargs", TrainKwargsError,
                        'Example: --train-kwargs \'{"batch_size": 16, "learning_rate": 0.001}\'')
    return check_train_kwargs(value, use_case.family, use_case.id)


DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"


def parse_device(text: str) -> str:
    """Check ``--device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    value = text.strip().lower()
    if value in ("auto", "cpu", "cuda", "mps") or (
        value.startswith("cuda:") and value[5:].isdigit()
    ):
        return value
    raise UsageError(f"Invalid --device '{text}'. Valid: {DEVICES_HELP}.")


def parse_eval_metric(text: str | None, use_case: UseCase) -> str:
    """The metric that ranks checkpoints; defaults to the use case's first metric."""
    if not text:
        return use_case.metrics[0]
    value = text.strip().lower().replace("-", "_")
    aliases = {"accuracy": "top1", "acc": "top1", "map": "map50_95", "em": "exact_match"}
    if value not in use_case.metrics and aliases.get(value) in use_case.metrics:
        value = aliases[value]
    if value not in use_case.metrics:
        raise UsageError(
            f"Invalid --eval-metric '{text}' for {use_case.id}."
            f"{did_you_mean(value, use_case.metrics)} Valid: {', '.join(use_case.metrics)}."
        )
    return value


def build_plan(
    use_case: UseCase,
    optim_level: float,
    *,
    model: str | None = None,
    recipe: str | None = None,
    recipe_args: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    teacher: str = "auto",
    device: str = "auto",
    seed: int = 42,
    eval_metric: str | None = None,
) -> Plan:
    """Assemble the plan. ``--model`` overrides the catalog's model, not the band's scheme."""
    band = band_for_level(optim_level)
    choice = locate_model(use_case, band, model)
    target = target_sparsity_for_level(optim_level)
    notes: list[str] = []
    args = dict(recipe_args or {})
    if recipe:
        recipe_name, origin = recipe, "user"
    else:
        sparse = (choice.expected_sparsity or 0.0) > SPARSE_MODEL_THRESHOLD
        recipe_name, origin = choose_recipe(use_case, band, sparse), "shipped"
        if choice.expected_sparsity is None and band.pruned:
            notes.append(
                f"recipe chosen after loading the model: {choose_recipe(use_case, band, True)} "
                f"if more than {SPARSE_MODEL_THRESHOLD:.0%} of its prunable weights are zero, "
                f"else {choose_recipe(use_case, band, False)}"
            )
        keep, ffn = keep_layers_for_level(optim_level), keep_ffn_for_level(optim_level)
        if keep is not None and choice.origin == "user" and recipe_family(use_case) == "nlp":
            # the shipped NLP recipes (gradual and constant pruning) carry LayerPruningModifier
            # and FFNPruningModifier
            args.setdefault("keep_layers", keep)
            if ffn is not None:
                args.setdefault("keep_ffn", ffn)
        channels = keep_channels_for_level(optim_level)
        if (channels is not None and choice.origin == "user"
                and recipe_family(use_case) == "image_classification"):
            # the shipped image recipes (gradual and constant pruning) carry
            # ChannelPruningModifier
            args.setdefault("keep_channels", channels)
        if is_gradual_recipe(recipe_name):
            if shrinks(args) and target > SHRUNK_TARGET_SPARSITY:
                # removed structure gives the speed; zeros above this only give size, and
                # they cost the shrunk model its accuracy (docs/OPTIM_LEVELS.md)
                notes.append(f"target sparsity {SHRUNK_TARGET_SPARSITY:.2f}, not the level's "
                             f"{target:.2f}: the model is shrunk structurally, and more zeros "
                             "would cost accuracy for size only")
                target = SHRUNK_TARGET_SPARSITY
            args.setdefault("target_sparsity", target)
    return Plan(
        use_case=use_case, optim_level=optim_level, band=band, target_sparsity=target,
        model=choice, recipe=recipe_name, recipe_origin=origin, recipe_args=args,
        train_kwargs=dict(train_kwargs or {}), teacher=teacher, device=device, seed=seed,
        eval_metric=parse_eval_metric(eval_metric, use_case), notes=notes,
    )


def plan_to_yaml(plan: Plan, extra: dict[str, Any] | None = None) -> str:
    """The plan as YAML text (``plan.yaml`` and ``--dry-run``)."""
    import yaml

    data = plan.to_dict()
    if extra:
        data.update(extra)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)



def plan_from_dict(recorded: dict[str, Any]) -> Plan:
    """The plan of an earlier run, from the ``plan.yaml`` it wrote (for ``sparsify.run
    export``): the same choices made again, with the recipe the run actually applied.

    Raises:
        UsageError: the file is not a plan (a field is missing or invalid).
    """
    import dataclasses

    from sparsify.usecases import resolve_use_case

    try:
        model = recorded["model"]
        recipe = recorded["recipe"]
        given = (model.get("local_path") or model["spec"]) if model["origin"] == "user" else None
        plan = build_plan(
            resolve_use_case(recorded["use_case"]), float(recorded["optim_level"]),
            model=given, recipe=recipe["name"] if recipe["origin"] == "user" else None,
            recipe_args=dict(recipe.get("args") or {}),
            train_kwargs=dict(recorded.get("train_kwargs") or {}),
            teacher=str(recorded.get("teacher", "disable")),
            device=str(recorded.get("device", "auto")), seed=int(recorded.get("seed", 42)),
            eval_metric=recorded.get("eval_metric"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"plan.yaml is not a sparse-transfer plan ({type(exc).__name__}: "
                         f"{exc}).", hint="Pass a run folder written by sparse-transfer.") from None
    return dataclasses.replace(plan, recipe=recipe["name"],
                               recipe_args=dict(recipe.get("args") or {}))

"""SparseML-format recipes: load, apply ``--recipe-args``, evaluate, validate (pure, no torch).

Every problem found is collected with its location (stage, list, modifier index, field) and
raised together in one ``RecipeError``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sparsify.errors import RecipeError, did_you_mean
from sparsify.modifiers.registry import MODIFIERS, modifier_class
from sparsify.recipe.evaluate import EvalError, eval_body, evaluate
from sparsify.zoo.stub import is_stub, parse_stub


# --- YAML with !Tag modifiers ----------------------------------------------------------------
@dataclass
class Tagged:
    """A ``!Name`` mapping as read from YAML (validated later)."""

    tag: str
    args: dict[str, Any]


class _Loader(yaml.SafeLoader):
    """Safe loader that reads ``!Name`` mappings into ``Tagged`` (nothing else is constructed).

    YAML aliases (``*name``) are refused: recipes do not need them, and an alias that nests
    others grows exponentially ("billion laughs") or refers to itself (a cycle)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in a recipe; "
                "write the values out", event.start_mark)
        return super().compose_node(parent, index)


def _construct_tagged(loader: _Loader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        return Tagged(suffix, loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.ScalarNode) and not loader.construct_scalar(node):
        return Tagged(suffix, {})
    raise yaml.constructor.ConstructorError(
        None, None, f"!{suffix} must be followed by a mapping of its fields", node.start_mark)


_Loader.add_multi_constructor("!", _construct_tagged)
# YAML 1.1 reads ``8e-5`` (no dot) as a string; SparseML's recipes (oBERT's ``init_lr: 8e-5``)
# mean the number, as YAML 1.2 does.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    Tagged, lambda dumper, t: dumper.represent_mapping("!" + t.tag, t.args))


# --- the parsed recipe -----------------------------------------------------------------------
@dataclass
class ModifierSpec:
    """One validated modifier: its class name, evaluated fields and location."""

    type: str
    args: dict[str, Any]
    stage: str | None
    group: str
    index: int

    @property
    def where(self) -> str:
        stage = f"stage '{self.stage}', " if self.stage else ""
        return f"{stage}{self.group}[{self.index}] ({self.type})"

    def build(self) -> Any:
        """A fresh modifier instance."""
        return modifier_class(self.type)(**self.args)


@dataclass
class Recipe:
    """A recipe as applied: variables evaluated, overrides merged, stages flattened."""

    variables: dict[str, Any]
    modifiers: list[ModifierSpec]
    stages: list[str] = field(default_factory=list)
    source: str = "<string>"
    overrides: dict[str, Any] = field(default_factory=dict)

    def build_modifiers(self) -> list[Any]:
        return [spec.build() for spec in self.modifiers]

    @property
    def max_epochs(self) -> float:
        """Training length: the largest end (or start) epoch over all modifiers."""
        return max((m.last_epoch() for m in self.build_modifiers()), default=0.0)

    def of_type(self, *names: str) -> list[ModifierSpec]:
        return [m for m in self.modifiers if m.type in names]

    @property
    def controls_lr(self) -> bool:
        return any(getattr(modifier_class(m.type), "controls_lr", False) for m in self.modifiers)

    def to_yaml(self) -> str:
        """SparseML-format YAML of the recipe as applied; ``parse_recipe`` reads it back to an
        equal recipe (stages already flattened into shifted epochs)."""
        doc: dict[str, Any] = dict(self.variables)
        groups: dict[str, list[Tagged]] = {}
        for spec in self.modifiers:
            key = f"{spec.stage}_{spec.group}" if spec.stage else spec.group
            groups.setdefault(key, []).append(Tagged(spec.type, dict(spec.args)))
        doc.update(groups)
        return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False)

    def summary(self) -> dict[str, Any]:
        """What a user checks before training: epochs, QAT start, each modifier's window."""
        built = self.build_modifiers()
        quant = [m for m in built if m.name == "QuantizationModifier"]
        out: dict[str, Any] = {
            "source": self.source,
            "epochs": self.max_epochs,
            "qat_start_epoch": min(max(m.start_epoch, 0.0) for m in quant) if quant else None,
            "controls_lr": self.controls_lr,
            # every epoch-valued field as applied (QAT: observer and BatchNorm freeze too)
            "modifiers": [{"type": m.name, **{f: getattr(m, f) for f in m.epoch_fields
                                              if getattr(m, f, None) is not None}}
                          for m in built],
        }
        if self.overrides:
            out["overrides"] = dict(self.overrides)
        return out


# --- reading the text ------------------------------------------------------------------------
SHIPPED_DIR = "recipes"


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    folder = resources.files("sparsify").joinpath(SHIPPED_DIR)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def front_matter(text: str, source: str) -> str:
    """The YAML between the first two ``---`` lines of a recipe card (``.md``)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if len(starts) < 2:
        raise RecipeError(f"{source} has no YAML front matter: a .md recipe must start with "
                          "its YAML between two '---' lines")
    return "\n".join(lines[starts[0] + 1:starts[1]])


def _zoo_recipe_file(stub_text: str) -> Path:
    from sparsify.zoo.local import find_in_local_zoo, zoo_roots

    stub = parse_stub(stub_text)
    folder = find_in_local_zoo(stub)
    if folder is None:
        roots = ", ".join(str(r) for r in zoo_roots())
        raise RecipeError(
            f"recipe stub {stub_text} is not in a local zoo folder (looked in {roots}). "
            "Register the model with its recipe folder first, or pass --recipe FILE."
        )
    name = stub.recipe_name
    candidates = ([folder / "recipe" / f"recipe_{name}.md", folder / "recipe" / f"{name}.md"]
                  if name else [folder / "recipe" / "recipe.md"])
    candidates += [c.with_suffix(".yaml") for c in candidates]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in (folder / "recipe").glob("*")) if (folder / "recipe").is_dir() else []
    raise RecipeError(f"no recipe file {candidates[0].name} in {folder / 'recipe'} "
                      f"(present: {', '.join(present) or 'none'})")


def read_recipe_text(spec: str) -> tuple[str, str]:
    """Turn a ``--recipe`` value into YAML text and a description of where it came from.

    Raises:
        RecipeError: the value is none of: YAML text, file, ``zoo:`` stub, shipped name.
    """
    if "\n" in spec:
        return spec, "<recipe text>"
    if is_stub(spec):
        path = _zoo_recipe_file(spec)
        text = path.read_text("utf-8")
        return (front_matter(text, str(path)) if path.suffix == ".md" else text), str(path)
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:
            raise RecipeError(f"{path} is not UTF-8 text") from None
        return (front_matter(text, str(path)) if path.suffix.lower() == ".md" else text), str(path)
    shipped = shipped_recipes()
    name = spec[:-5] if spec.endswith(".yaml") else spec
    if name in shipped:
        text = resources.files("sparsify").joinpath(f"{SHIPPED_DIR}/{name}.yaml").read_text("utf-8")
        return text, f"shipped recipe '{name}'"
    raise RecipeError(
        f"--recipe '{spec}' is not a file, a zoo: stub or a shipped recipe."
        f"{did_you_mean(name, shipped)} Shipped: {', '.join(shipped)}."
    )


# --- parsing ---------------------------------------------------------------------------------
def _is_modifier_key(key: str) -> bool:
    return "modifiers" in key


def _resolve_variables(raw: dict[str, Any], outer: dict[str, Any], where: str,
                       problems: list[str]) -> dict[str, Any]:
    """Evaluate variables that refer to each other (depth-first, cycles reported)."""
    resolved: dict[str, Any] = {}
    visiting: list[str] = []

    def value_of(name: str) -> Any:
        if name in resolved:
            return resolved[name]
        if name not in raw:
            return outer[name]
        if name in visiting:
            cycle = " -> ".join(visiting[visiting.index(name):] + [name])
            raise EvalError(f"variables refer to each other in a cycle: {cycle}")
        visiting.append(name)
        try:
            value = _evaluate_value(raw[name], scope_lookup)
        finally:
            visiting.pop()
        resolved[name] = value
        return value

    class _Scope(dict):
        def __contains__(self, key: object) -> bool:
            return key in raw or key in outer

        def __getitem__(self, key: str) -> Any:
            return value_of(key)

    scope_lookup = _Scope()
    for name in raw:
        try:
            value_of(name)
        except EvalError as exc:
            problems.append(f"{where}variable '{name}': {exc}")
            resolved.setdefault(name, None)
    return {**outer, **resolved}


def _evaluate_value(value: Any, variables: Any) -> Any:
    body = eval_body(value)
    if body is not None:
        return evaluate(body, variables)
    if isinstance(value, list):
        return [_evaluate_value(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _evaluate_value(v, variables) for k, v in value.items()}
    return value


def _check_tags_outside(value: Any, where: str, problems: list[str]) -> None:
    if isinstance(value, Tagged):
        problems.append(f"{where}: modifier !{value.tag} is outside a '*modifiers*' list")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_tags_outside(v, f"{where}[{i}]", problems)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_tags_outside(v, f"{where}.{k}", problems)


def _validate_modifier(tagged: Any, variables: dict[str, Any], stage: str | None, group: str,
                       index: int, problems: list[str]) -> ModifierSpec | None:
    stage_txt = f"stage '{stage}', " if stage else ""
    where = f"{stage_txt}{group}[{index}]"
    if not isinstance(tagged, Tagged):
        problems.append(f"{where}: expected a '!ModifierName' entry, got {tagged!r}")
        return None
    where = f"{where} (!{tagged.tag})"
    if tagged.tag not in MODIFIERS:
        problems.append(f"{where}: unknown modifier '{tagged.tag}'."
                        f"{did_you_mean(tagged.tag, MODIFIERS)} Supported: {', '.join(MODIFIERS)}")
        return None
    cls = modifier_class(tagged.tag)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    ok = True
    args: dict[str, Any] = {}
    for key, value in tagged.args.items():
        key = str(key)
        if key not in fields:
            problems.append(f"{where}: unknown field '{key}'.{did_you_mean(key, fields)} "
                            f"Valid: {', '.join(fields)}")
            ok = False
            continue
        try:
            args[key] = _evaluate_value(value, variables)
        except EvalError as exc:
            problems.append(f"{where} field '{key}': {exc}")
            ok = False
    for name in required:
        if name not in tagged.args:
            problems.append(f"{where}: missing required field '{name}'")
            ok = False
    if not ok:
        return None
    try:
        cls(**args)
    except (ValueError, TypeError) as exc:
        problems.append(f"{where} {exc}" if ":" in str(exc) else f"{where}: {exc}")
        return None
    return ModifierSpec(tagged.tag, args, stage, group, index)


def _shift(spec: ModifierSpec, offset: float) -> None:
    if not offset:
        return
    for name in modifier_class(spec.type).epoch_fields:
        value = spec.args.get(name)
        if isinstance(value, (int, float)) and value != -1:
            spec.args[name] = float(value) + offset
    if "start_epoch" not in spec.args:
        spec.args["start_epoch"] = offset


def parse_recipe(text: str, recipe_args: dict[str, Any] | None = None,
                 source: str = "<string>") -> Recipe:
    """Parse SparseML-format YAML text into a validated ``Recipe``.

    Raises:
        RecipeError: with every problem found (YAML syntax, unknown modifiers or fields, bad
            ``eval``, unknown override names, invalid values, misplaced modifiers).
    """
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise RecipeError([f"YAML syntax error: {exc}"], source) from None
    if doc is None or not isinstance(doc, dict):
        raise RecipeError(["a recipe is a YAML mapping of variables and '*modifiers' lists "
                           f"(this one is {'empty' if doc is None else type(doc).__name__})"],
                          source)
    problems: list[str] = []
    overrides = dict(recipe_args or {})

    top_vars: dict[str, Any] = {}
    groups: list[tuple[str, Any]] = []
    stages: list[tuple[str, dict[str, Any]]] = []
    for key, value in doc.items():
        key = str(key)
        if _is_modifier_key(key):
            groups.append((key, value))
        elif isinstance(value, dict) and any(_is_modifier_key(str(k)) for k in value):
            stages.append((key, value))
        else:
            _check_tags_outside(value, key, problems)
            top_vars[key] = value

    stage_vars: list[tuple[str, dict[str, Any], list[tuple[str, Any]]]] = []
    for name, body in stages:
        svars, sgroups = {}, []
        for key, value in body.items():
            key = str(key)
            if _is_modifier_key(key):
                sgroups.append((key, value))
            else:
                _check_tags_outside(value, f"{name}.{key}", problems)
                svars[key] = value
        stage_vars.append((name, svars, sgroups))

    known = set(top_vars) | {k for _, v, _ in stage_vars for k in v}
    for key, value in overrides.items():
        if key not in known:
            problems.append(f"--recipe-args: '{key}' is not a variable of this recipe."
                            f"{did_you_mean(key, known)} Variables: "
                            f"{', '.join(sorted(known)) or 'none'}")
            continue
        if key in top_vars:
            top_vars[key] = value
        for _, svars, _ in stage_vars:
            if key in svars:
                svars[key] = value

    variables = _resolve_variables(top_vars, {}, "", problems)
    modifiers: list[ModifierSpec] = []

    def read_groups(group_list: list[tuple[str, Any]], scope: dict[str, Any],
                    stage: str | None) -> list[ModifierSpec]:
        out = []
        for group, items in group_list:
            where = f"stage '{stage}', {group}" if stage else group
            if not isinstance(items, list):
                problems.append(f"{where}: a '*modifiers' key holds a list of !Modifier entries")
                continue
            for index, item in enumerate(items):
                spec = _validate_modifier(item, scope, stage, group, index, problems)
                if spec:
                    out.append(spec)
        return out

    modifiers.extend(read_groups(groups, variables, None))
    offset = max((spec.build().last_epoch() for spec in modifiers), default=0.0)
    for name, svars, sgroups in stage_vars:
        scope = _resolve_variables(svars, variables, f"stage '{name}', ", problems)
        specs = read_groups(sgroups, scope, name)
        stage_end = max((s.build().last_epoch() for s in specs), default=0.0)
        for spec in specs:
            _shift(spec, offset)
        modifiers.extend(specs)
        offset += stage_end

    if not modifiers and not problems:
        problems.append("no modifiers: a recipe lists them under keys ending in 'modifiers' "
                        "(e.g. 'training_modifiers: [!EpochRangeModifier {end_epoch: 10}]'); "
                        "without one nothing would be trained")
    if problems:
        raise RecipeError(problems, source)
    return Recipe(variables=variables, modifiers=modifiers, stages=[s for s, _ in stages],
                  source=source, overrides=overrides)


def load_recipe(spec: str, recipe_args: dict[str, Any] | None = None) -> Recipe:
    """Read a ``--recipe`` value (file, ``.md`` card, YAML text, ``zoo:`` stub, shipped name)
    and parse it with ``recipe_args`` applied.

    Raises:
        RecipeError: the recipe cannot be found or has problems (all listed).
    """
    text, source = read_recipe_text(spec)
    return parse_recipe(text, recipe_args, source)


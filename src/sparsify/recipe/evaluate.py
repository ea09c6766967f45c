"""Restricted evaluation of ``eval(...)`` expressions in recipes (pure).

An AST walk over an allow-list of node types: numbers, variable names, ``+ - * / // ** %``,
unary ``+``/``-``, parentheses and calls to ``abs float int min max round``. Python's ``eval``
is never used, so ``__import__('os')``, attribute access, subscripts, lambdas and comprehensions
are rejected before anything runs.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

_EVAL = re.compile(r"^\s*eval\s*\((.*)\)\s*$", re.DOTALL)
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "float": float, "int": int, "min": min, "max": max, "round": round,
}
#: Guards against expressions that would take forever (``10 ** 10 ** 10``).
_MAX_EXPONENT = 1000


class EvalError(ValueError):
    """An ``eval(...)`` expression that is not allowed or cannot be computed."""


def eval_body(value: Any) -> str | None:
    """The expression inside ``eval(...)``, or ``None`` when ``value`` is not such a string."""
    if isinstance(value, str):
        match = _EVAL.match(value)
        if match:
            return match.group(1)
    return None


def evaluate(expression: str, variables: Mapping[str, Any]) -> Any:
    """Evaluate ``expression`` over ``variables`` with the restricted grammar.

    A bare name whose value is not a number (a list, a string) evaluates to that value.

    Raises:
        EvalError: a disallowed construct, an unknown name, or an arithmetic error.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise EvalError(f"invalid expression '{expression}': {exc.msg}") from None
    if isinstance(tree.body, ast.Name) and tree.body.id in variables:
        return variables[tree.body.id]
    return _walk(tree.body, variables, expression)


def _walk(node: ast.AST, variables: Mapping[str, Any], text: str) -> Any:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise EvalError(f"only numbers are allowed in eval(), got {node.value!r} in '{text}'")
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in variables:
            raise EvalError(f"unknown variable '{node.id}' in '{text}'")
        value = variables[node.id]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EvalError(f"variable '{node.id}' is not a number ({value!r}) in '{text}'")
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left = _walk(node.left, variables, text)
        right = _walk(node.right, variables, text)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise EvalError(f"exponent {right} too large in '{text}'")
        try:
            result = _BINOPS[type(node.op)](left, right)
        except (ArithmeticError, ValueError) as exc:
            raise EvalError(f"{exc} in '{text}'") from None
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
            raise EvalError(f"'{text}' does not give a finite real number")
        return result
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand, variables, text))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise EvalError(f"function '{name}' is not allowed in '{text}' "
                            f"(allowed: {', '.join(FUNCTIONS)})")
        if node.keywords:
            raise EvalError(f"keyword arguments are not allowed in '{text}'")
        args = [_walk(a, variables, text) for a in node.args]
        try:
            return FUNCTIONS[node.func.id](*args)
        except (TypeError, ValueError) as exc:
            raise EvalError(f"{exc} in '{text}'") from None
    raise EvalError(f"'{type(node).__name__}' is not allowed in eval(): '{text}' "
                    "(allowed: numbers, variable names, + - * / // ** %, parentheses, "
                    f"{', '.join(FUNCTIONS)})")

"""Valid ranges of the numeric (and choice) keys of a run configuration, declared as short texts.

Every config class states the range of each of its keys in a class attribute ``ranges`` (merged
along the class hierarchy, a subclass overriding its bases), and [`RunConfig.validate`][meanfield.run.presets.RunConfig.validate]
checks every value against it before any compute: a bad value is a one-line
[`ConfigError`][meanfield.run.ConfigError] naming the key, the value and the range. ``meanfield show`` prints the
ranges next to the keys.

The text of a range is an interval, optionally followed by qualifiers, separated by commas:

* ``[lo, hi]``, ``(lo, hi)``, ``[lo, hi)``, ``(lo, hi]``: closed or open ends. ``lo`` and ``hi``
  are numbers, ``inf``/``-inf``, or arithmetic on the config's other keys (``n - 1``,
  ``2 * pde_modes``, ``max(8, window + 1)``). NaN is never in range; ±inf only at a closed
  infinite end.
* ``even``; ``multiple of K``; ``divides K`` (K a number or an expression of other keys).
* ``one of KEY``: the value must be an element of the tuple key KEY.
* ``{a, b, c}``: a choice among words (string keys).

Tuple keys take the range of their elements, with tuple qualifiers: ``length >= K``,
``increasing`` (strictly), ``distinct``, ``contains KEY`` (the tuple holds the value of KEY).

Examples: ``"(0, inf)"`` (finite and positive), ``"[1, n)"``, ``"[3, n_s], divides n_s"``,
``"(0, 10], length >= 3, increasing"``, ``"{SA, USA}"``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import operator
import typing

# Pure-Python parsing with no arrays: every function here is kept out of the test-time jaxtyping
# hook (@typing.no_type_check), whose per-call check (~0.3 ms) would make one validate() cost
# hundreds of checked calls.

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}
_FUNCS = {"max": max, "min": min}


@typing.no_type_check
def evaluate(expr: str, values: dict) -> float:
    """The arithmetic expression ``expr`` (numbers, ``inf``, config keys, + - * / // **, max, min)
    with the config's ``values``."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id == "inf":
                return math.inf
            if node.id in values:
                return values[node.id]
            raise KeyError(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
        ):
            return _FUNCS[node.func.id](*(ev(a) for a in node.args))
        raise ValueError(f"unsupported expression {expr!r}")

    return ev(ast.parse(expr.strip(), mode="eval"))


@typing.no_type_check
def _split_top(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses and brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        cur += ch
    return parts + [cur]


@typing.no_type_check
def _interval(text: str):
    """(open bracket, lo, hi, close bracket, rest) of a leading interval, or None."""
    if not text or text[0] not in "[(":
        return None
    depth = 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0:
            inner = _split_top(text[1:i])
            if len(inner) != 2:
                return None
            return text[0], inner[0].strip(), inner[1].strip(), text[i], text[i + 1 :].lstrip(" ,")
    return None


@typing.no_type_check
@dataclasses.dataclass(frozen=True)
class Range:
    """A parsed range text (module docstring). ``check(value, values)`` returns None when the
    value is in range, else the reason; ``values`` are the config's keys (for bounds that name
    other keys)."""

    text: str
    lo: str | None = None
    hi: str | None = None
    lo_closed: bool = True
    hi_closed: bool = True
    choices: tuple[str, ...] | None = None
    even: bool = False
    multiple_of: str | None = None
    divides: str | None = None
    one_of: str | None = None
    min_length: int = 0
    increasing: bool = False
    distinct: bool = False
    contains: str | None = None

    @classmethod
    @functools.cache
    def parse(cls, text: str) -> Range:
        text = " ".join(text.split())
        kw: dict = {}
        rest = text
        if text.startswith("{"):
            end = text.index("}")
            kw["choices"] = tuple(w.strip() for w in text[1:end].split(",") if w.strip())
            rest = text[end + 1 :].lstrip(", ")
        else:
            iv = _interval(text)
            if iv is not None:
                kw.update(lo=iv[1], hi=iv[2], lo_closed=iv[0] == "[", hi_closed=iv[3] == "]")
                rest = iv[4]
        for q in (q.strip() for q in _split_top(rest) if q.strip()):
            if q == "even":
                kw["even"] = True
            elif q == "increasing":
                kw["increasing"] = True
            elif q == "distinct":
                kw["distinct"] = True
            elif q.startswith("multiple of "):
                kw["multiple_of"] = q[len("multiple of ") :]
            elif q.startswith("divides "):
                kw["divides"] = q[len("divides ") :]
            elif q.startswith("one of "):
                kw["one_of"] = q[len("one of ") :]
            elif q.startswith("contains "):
                kw["contains"] = q[len("contains ") :]
            elif q.startswith("length >= "):
                kw["min_length"] = int(q[len("length >= ") :])
            else:
                raise ValueError(f"range {text!r}: unknown qualifier {q!r}")
        return cls(text=text, **kw)

    def bounds(self, values: dict) -> tuple[float, float]:
        lo = -math.inf if self.lo is None else evaluate(self.lo, values)
        hi = math.inf if self.hi is None else evaluate(self.hi, values)
        return lo, hi

    def check_element(self, v, values: dict) -> str | None:
        """None if the scalar ``v`` is in range, else what is wrong."""
        if self.choices is not None:
            return None if v in self.choices else f"must be one of {{{', '.join(self.choices)}}}"
        if self.one_of is not None:
            pool = values[self.one_of]
            if v not in pool:
                return f"must be one of {self.one_of} = {tuple(pool)}"
        if isinstance(v, str):
            return None
        if isinstance(v, float) and math.isnan(v):
            return f"must be in {self.text}"
        lo, hi = self.bounds(values)
        below = v < lo or (v == lo and not self.lo_closed)
        above = v > hi or (v == hi and not self.hi_closed)
        if below or above:
            return f"must be in {self.text}"
        if self.even and v % 2:
            return f"must be even ({self.text})"
        if self.multiple_of is not None:
            k = evaluate(self.multiple_of, values)
            if k == 0 or v % k:
                return f"must be a multiple of {self.multiple_of} = {k:g} ({self.text})"
        if self.divides is not None:
            k = evaluate(self.divides, values)
            if v == 0 or k % v:
                return f"must divide {self.divides} = {k:g} ({self.text})"
        return None

    def check(self, value, values: dict) -> str | None:
        """None if ``value`` (scalar or tuple) is in range, else the reason (one line)."""
        if not isinstance(value, tuple):
            return self.check_element(value, values)
        if len(value) < max(self.min_length, 1):
            return f"needs at least {max(self.min_length, 1)} value(s) ({self.text})"
        for v in value:
            why = self.check_element(v, values)
            if why is not None:
                return f"element {v!r} {why}"
        if self.increasing and any(b <= a for a, b in zip(value, value[1:])):
            return f"must be strictly increasing ({self.text})"
        if self.distinct and len(set(value)) != len(value):
            return f"must hold distinct values ({self.text})"
        if self.contains is not None and values[self.contains] not in value:
            return f"must contain {self.contains} = {values[self.contains]!r} ({self.text})"
        return None


@typing.no_type_check
def is_numeric(t) -> bool:
    """int, float, or a tuple of them (the keys that must declare a range)."""
    if typing.get_origin(t) is tuple:
        return all(a in (int, float) for a in typing.get_args(t) if a is not Ellipsis)
    return t in (int, float)

"""Self-describing results: every variable and coordinate of a preset's Dataset carries ``long_name``,
``units`` ("1" for dimensionless numbers) and a ``description`` naming the parameters it depends on.

A description is a short text in which ``{key}`` stands for the value of the run's config key
``key`` (formatted when the Dataset is annotated, so the file records the values used, e.g.
``cluster_tol = 0.01`` for ``n_clusters``). The shared names (the particle observables, ``x``,
``time``, ...) are described in [`COMMON`][meanfield.run.COMMON]; each preset adds its own in its
``variables`` class attribute (a name with ``*`` matches the names a preset makes per config value,
as ``profile_n*``). A swept key that no table names is described from its config field.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import inspect
import string
import textwrap

import xarray as xr


@dataclasses.dataclass(frozen=True)
class Var:
    """What a Dataset variable or coordinate is: its name for people, its units, and what it depends on."""

    long_name: str
    units: str = "1"
    description: str = ""


ATTRS = ("long_name", "units", "description")

_OBS = "of the token cloud at each saved time"
COMMON: dict[str, Var] = {
    "x": Var(
        "token positions",
        "1",
        "the tokens x_i (unit vectors of R^d, the rows of X) at each saved time",
    ),
    "time": Var(
        "time (depth)",
        "1",
        "continuous time t, the depth of the transformer (a layer of step h sits at t = h k)",
    ),
    "t": Var(
        "save time of each point",
        "1",
        "the save times of each sweep point (a swept key changed them)",
    ),
    "token": Var("token index", "1", "i = 0..N-1, the token's sequence position"),
    "dim": Var("coordinate", "1", "Cartesian coordinate of R^d"),
    "energy": Var(
        "interaction energy E_beta",
        "1",
        f"(1/(2 beta)) sum_ij m_i m_j exp(beta <x_i, x_j>), m_i = 1/N, {_OBS}; depends on beta",
    ),
    "diameter": Var("diameter", "1", f"max_ij |x_i - x_j| {_OBS}"),
    "min_cosine": Var(
        "minimum cosine", "1", f"min over i != j of <x_i, x_j> / (|x_i| |x_j|) {_OBS}"
    ),
    "mean_cosine": Var(
        "mean cosine", "1", f"mean over i != j of <x_i, x_j> / (|x_i| |x_j|) {_OBS}"
    ),
    "n_clusters": Var(
        "number of clusters",
        "1",
        f"connected components of the graph i ~ j iff |x_i - x_j| < cluster_tol = {{cluster_tol}}, {_OBS}",
    ),
    "rank_collapse": Var(
        "rank-collapse residual",
        "1",
        f"||X - 1 xbar^T||_F / ||X||_F (0 when every token is at the mean) {_OBS}",
    ),
    "effective_rank": Var(
        "effective rank",
        "1",
        f"exp(entropy of the normalised singular values of X), between 1 and min(N, d), {_OBS}",
    ),
    "dirac_distance": Var(
        "W2 distance to the nearest Dirac mass",
        "1",
        "min over unit vectors c of (sum_i m_i |x_i - c|^2)^(1/2) = (2 - 2 |xbar|)^(1/2)",
    ),
    "beta": Var(
        "inverse temperature beta", "1", "the score scale beta in a_ij = beta <Q x_i, K x_j> + b_ij"
    ),
    "seed_index": Var(
        "seed index", "1", "index of the random seed (seed + index) of each repetition"
    ),
}
"""The descriptions of the Dataset names that presets share: the particle observables, ``x``,
``time``, ``token``, ``dim``, ``beta``; a preset's own ``variables`` take precedence."""


def field_docs(cls) -> dict[str, str]:
    """The attribute docstrings (the string after each field) of a config dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


class _Values(dict):
    def __missing__(self, key):
        raise KeyError(
            f"a description names the config key {key!r}, which this config does not have"
        )


def annotate(ds: xr.Dataset, table: dict[str, Var], cfg) -> xr.Dataset:
    """Set ``long_name``, ``units`` and ``description`` on every variable and coordinate of ``ds``
    named in ``table`` (or in [`COMMON`][meanfield.run.COMMON]); a coordinate named after a
    config key is described by that key's field docstring. Attributes a preset already set are kept."""
    values = _Values(dataclasses.asdict(cfg)) if dataclasses.is_dataclass(cfg) else _Values()
    docs = field_docs(type(cfg)) if dataclasses.is_dataclass(cfg) else {}
    full = {**COMMON, **table}
    fmt = string.Formatter()
    for name in [*ds.coords, *ds.data_vars]:
        spec = full.get(name)
        if (
            spec is None
        ):  # names made per config value (profile_n64, s128, ...): a key with a wildcard
            spec = next(
                (v for k, v in full.items() if "*" in k and fnmatch.fnmatchcase(name, k)), None
            )
        if spec is None and name in values:  # a swept config key
            spec = Var(docs.get(name, name), "1", f"the config key {name} (swept)")
        if spec is None:
            continue
        attrs = ds[name].attrs
        attrs.setdefault("long_name", spec.long_name)
        attrs.setdefault("units", spec.units)
        attrs.setdefault("description", fmt.vformat(spec.description, (), values))
    return ds


def missing_attrs(ds: xr.Dataset) -> list[str]:
    """The variables and coordinates of ``ds`` without a non-empty long_name, units or description."""
    return [
        f"{name}: {a}"
        for name in [*ds.coords, *ds.data_vars]
        for a in ATTRS
        if not str(ds[name].attrs.get(a, ""))
    ]

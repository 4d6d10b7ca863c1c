"""Every value a user can type (``--set``, a TOML file, ``--grid``) is checked against the key's
declared range when the config is built, before any compute: inside the range builds a valid
config, outside it is a one-line ConfigError naming the key (exit status 2 in the command)."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meanfield.run import cli
from meanfield.run.config import ConfigError, apply_overrides, check_ranges, field_types, key_ranges
from meanfield.run.presets import load_presets, parse_grid
from meanfield.run.ranges import Range, evaluate, is_numeric

PRESETS = load_presets()
KEYS = [
    (name, f.name)
    for name, p in sorted(PRESETS.items())
    for f in dataclasses.fields(p.Config)
    if is_numeric(field_types(p.Config)[f.name]) or f.name in key_ranges(p.Config)
]
SETTINGS = settings(
    derandomize=True,
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _defaults(preset):
    cfg = PRESETS[preset].Config()
    return cfg, {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _element_type(t):
    return t.__args__[0] if getattr(t, "__origin__", None) is tuple else t


def _int_bounds(rng, values):
    lo, hi = rng.bounds(values)
    ilo = (
        -(10**6)
        if lo == -math.inf
        else math.ceil(lo) + (not rng.lo_closed and float(lo).is_integer())
    )
    ihi = (
        10**6 if hi == math.inf else math.floor(hi) - (not rng.hi_closed and float(hi).is_integer())
    )
    return ilo, ihi


def _valid_element(rng: Range, t, values):
    if rng.choices is not None:
        return st.sampled_from(rng.choices)
    if rng.one_of is not None:
        return st.sampled_from(list(values[rng.one_of]))
    if t is int:
        lo, hi = _int_bounds(rng, values)
        if rng.divides is not None:
            k = int(evaluate(rng.divides, values))
            return st.sampled_from([v for v in range(max(lo, 1), min(hi, k) + 1) if k % v == 0])
        step = 2 if rng.even else int(evaluate(rng.multiple_of, values)) if rng.multiple_of else 1
        return st.integers(-(-lo // step), hi // step).map(lambda v: v * step)
    lo, hi = rng.bounds(values)
    return st.floats(
        None if lo == -math.inf else lo,
        None if hi == math.inf else hi,
        allow_nan=False,
        allow_infinity=False,
        exclude_min=not rng.lo_closed and lo != -math.inf,
        exclude_max=not rng.hi_closed and hi != math.inf,
    )


def _valid(rng: Range, t, values):
    elem = _valid_element(rng, _element_type(t), values)
    if getattr(t, "__origin__", None) is not tuple:
        return elem
    lists = st.lists(
        elem,
        min_size=max(rng.min_length, 1),
        max_size=max(rng.min_length, 1) + 4,
        unique=rng.distinct or rng.increasing,
    )
    if rng.contains is not None:
        need = values[rng.contains]
        lists = lists.map(lambda v: v if need in v else v[:-1] + [need])
        lists = (
            lists.filter(lambda v: len(set(v)) == len(v))
            if rng.distinct or rng.increasing
            else lists
        )
    return lists.map(lambda v: tuple(sorted(v)) if rng.increasing else tuple(v))


def nearest_bad(rng: Range, t, values) -> list:
    """The values just outside the range of one element: below lo and above hi (the nearest
    integers, or the bound itself / the next float for open / closed ends), a value that breaks a
    qualifier, or a word outside the choices."""
    et = _element_type(t)
    if rng.choices is not None:
        return ["not-a-choice"]
    if rng.one_of is not None:
        return [max(values[rng.one_of]) + 1]
    out = []
    lo, hi = rng.bounds(values)
    if et is int:
        ilo, ihi = _int_bounds(rng, values)
        out += [ilo - 1] if lo != -math.inf else []
        out += [ihi + 1] if hi != math.inf else []
        if rng.even and ilo + 1 <= ihi:
            out.append(ilo + 1 if ilo % 2 == 0 else ilo)
        if rng.multiple_of is not None and int(evaluate(rng.multiple_of, values)) > 1:
            out.append(ilo + 1 if ilo + 1 <= ihi else ilo)
        if rng.divides is not None:
            k = int(evaluate(rng.divides, values))
            out += [v for v in range(max(ilo, 1), ihi + 1) if k % v][:1]
    else:
        if lo != -math.inf:
            out.append(lo if not rng.lo_closed else float(np.nextafter(lo, -np.inf)))
        if hi != math.inf:
            out.append(hi if not rng.hi_closed else float(np.nextafter(hi, np.inf)))
    return out


def test_every_numeric_key_of_every_preset_declares_a_range():
    missing = [
        (name, f.name)
        for name, p in PRESETS.items()
        for f in dataclasses.fields(p.Config)
        if is_numeric(field_types(p.Config)[f.name]) and f.name not in key_ranges(p.Config)
    ]
    assert not missing


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_defaults_are_valid_and_chunks_range_is_the_save_intervals(preset):
    cfg, values = _defaults(preset)
    cfg.validate()
    intervals = len(PRESETS[preset].times(cfg)) - 1
    assert key_ranges(type(cfg))["chunks"].bounds(values) == (1, intervals)


@pytest.mark.parametrize("preset,key", KEYS)
def test_values_inside_the_range_build_a_valid_config(preset, key):
    cfg, values = _defaults(preset)
    rng, t = key_ranges(type(cfg))[key], field_types(type(cfg))[key]

    @SETTINGS
    @given(_valid(rng, t, values))
    def inside(value):
        new = dataclasses.replace(cfg, **{key: value})
        check_ranges(new, first=[key])
        new.validate()

    inside()


@pytest.mark.parametrize("preset,key", KEYS)
def test_values_outside_the_range_name_the_key(preset, key):
    cfg, values = _defaults(preset)
    rng, t = key_ranges(type(cfg))[key], field_types(type(cfg))[key]
    et = _element_type(t)
    scalars = nearest_bad(rng, t, values)
    if et is float:
        scalars += [math.nan, math.inf, -math.inf]
        lo, hi = rng.bounds(values)
        far = []
        if lo != -math.inf:
            far.append(
                st.floats(
                    max_value=lo, exclude_max=rng.lo_closed, allow_nan=False, allow_infinity=False
                )
            )
        if hi != math.inf:
            far.append(
                st.floats(
                    min_value=hi, exclude_min=rng.hi_closed, allow_nan=False, allow_infinity=False
                )
            )
        bad = st.one_of(st.sampled_from(scalars), *far)
    else:
        bad = st.sampled_from(scalars) if scalars else None
    if bad is None:
        pytest.skip(f"{key}: every {et.__name__} is in range {rng.text}")
    tuple_key = getattr(t, "__origin__", None) is tuple

    @SETTINGS
    @given(bad)
    def outside(value):
        v = (value,) + tuple(values[key][1:]) if tuple_key else value
        with pytest.raises(ConfigError, match=rf"^{key} = "):
            check_ranges(dataclasses.replace(cfg, **{key: v}), first=[key])

    outside()


def test_meaningful_negative_values_stay_valid():
    apply_overrides(PRESETS["kinetic-causal"].Config(), ["twist=-3.5"])
    apply_overrides(PRESETS["pe-sweep"].Config(), ["freq=-1"])


def _battery_cases():
    """preset, key, typed text: nan, inf, -inf and the nearest out-of-range values of each
    numeric key (one bad element for tuple keys)."""
    for preset, key in KEYS:
        cfg, values = _defaults(preset)
        rng, t = key_ranges(type(cfg))[key], field_types(type(cfg))[key]
        if not is_numeric(t):
            continue
        for bad in ["nan", "inf", "-inf", *(repr(v) for v in nearest_bad(rng, t, values))]:
            text = (
                ",".join([bad, *(repr(v) for v in values[key][1:])])
                if isinstance(values[key], tuple)
                else bad
            )
            yield preset, key, text


@pytest.mark.slow
def test_command_battery_refuses_every_bad_value_before_compute(monkeypatch, capsys):
    """Every preset x numeric key x {nan, inf, -inf, nearest out-of-range}, through --set and
    --grid, in one process: exit 2 with one line naming the key, never reaching execute."""

    def never(*args, **kwargs):
        raise AssertionError("execute reached with a bad value")

    monkeypatch.setattr(cli, "execute", never)
    tried, short = 0, []
    for preset, key, text in _battery_cases():
        for argv in (
            ["run", preset, "--set", f"{key}={text}"],
            ["sweep", preset, "--grid", f"{key}={text}"],
        ):
            tried += 1
            code = cli.main(argv + ["--out", "/nonexistent/never-written", "--no-progress"])
            err = capsys.readouterr().err.strip().splitlines()
            if code != 2 or len(err) != 1 or key not in err[0] or "Traceback" in err[0]:
                short.append((argv, code, err[:3]))
    assert tried > 1000 and not short, (tried, short[:5])


def test_toml_values_are_checked(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("beta = nan\n")
    assert cli.main(["run", "clustering", "--set", str(path)]) == 2
    assert "beta = nan is out of range" in capsys.readouterr().err


def test_grid_points_are_validated_together():
    cfg = PRESETS["masks"].Config()
    with pytest.raises(
        ConfigError, match=r"--grid: window = 200 is out of range: must be in \[1, n\)"
    ):
        parse_grid(cfg, ["window=8,200"])


def test_show_prints_the_range_of_every_key(capsys):
    assert cli.main(["show", "kinetic-causal"]) == 0
    out = capsys.readouterr().out
    for key, rng in key_ranges(PRESETS["kinetic-causal"].Config).items():
        line = next(li for li in out.splitlines() if li.strip().startswith(f"{key}:"))
        assert line.endswith(f"in {rng.text}")

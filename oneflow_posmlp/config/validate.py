"""Validation against the schema: the one error type, the nearest-key hint, and the per-key checks.

Every section of a config (``model`` included) is checked here, key by key, against ``schema.py``: the key
must exist, the value has its default's type (an int default takes no float, a float default takes ints,
a list default needs a list; ``None`` defaults take ``None`` or the type in ``NULLABLE``) and satisfies
``CHOICES``, ``RANGES`` and ``LENGTHS``. Every error is a :class:`ConfigError` naming the key, the value and
the fix. Rules between keys live with their section (``loader._finish``, ``model.check_model_geometry``).
"""
import difflib

from .schema import CHOICE_NOTES, CHOICES, LENGTHS, NULLABLE, RANGES


class ConfigError(ValueError):
    """An invalid config (a file, ``--opts`` or model keyword arguments); the message names the key, the value
    and how to fix it."""


def did_you_mean(key, choices, prefix=""):
    """``"; did you mean 'PREFIX CLOSEST'?"`` for the valid name closest to ``key``, or ``""`` if none is close."""
    close = difflib.get_close_matches(str(key), [str(c) for c in choices], n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def check_known(key, valid, where):
    """ConfigError unless ``key`` is one of ``valid`` (the keys of section ``where``, '' for the top level)."""
    if key in valid:
        return
    prefix = f"{where}." if where else ""
    raise ConfigError(f"unknown config key '{prefix}{key}'{did_you_mean(key, valid, prefix)} (valid keys in "
                      f"{where or 'the top level'}: {', '.join(map(str, valid))})")


def check_section(section, values, defaults):
    """``values`` (a section dict, changed in place and returned) checked key by key against ``defaults``."""
    for key in values:
        check_known(key, defaults, section)
        values[key] = check_value(f"{section}.{key}", defaults[key], values[key])
    return values


def _type_name(default):
    return {bool: "bool (true/false)", int: "int", float: "float", str: "str", list: "list"}.get(
        type(default), type(default).__name__)


def check_value(path, default, value):
    """``value`` of the dotted key ``path`` converted to the default's type (int -> float, tuple -> list), or a
    ConfigError naming the key, what it must be and what it got."""
    section, _, key = path.partition(".")
    where = (section, key)
    if default is None:
        want = NULLABLE.get(where)
        if value is None or want is None or isinstance(value, want):
            return value
        raise ConfigError(f"config key '{path}' must be {want.__name__} or null, got {value!r} "
                          f"({type(value).__name__})")
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"config key '{path}' must be {_type_name(default)} (like {default!r}), got {value!r} "
                          f"({type(value).__name__})")
    _check_constraints(path, where, value)
    return value


def _in_range(bounds, value):
    """``(ok, text)``: whether ``value`` lies in ``bounds`` = ``(lo, hi)`` inclusive, or ``(lo, hi, how)`` with
    ``how`` one of ``"open"`` (both ends excluded), ``"(]"``, ``"[)"``; ``text`` says the bounds in words."""
    lo, hi, how = (*bounds, "[]") if len(bounds) == 2 else bounds
    how = "()" if how == "open" else how
    lo_ok = lo < value if how[0] == "(" else lo <= value
    hi_ok = value < hi if how[1] == ")" else value <= hi
    text = f"{'>' if how[0] == '(' else '>='} {lo}"
    if hi != float("inf"):
        text += f" and {'<' if how[1] == ')' else '<='} {hi}"
    return lo_ok and hi_ok, text


def _check_constraints(path, where, value):
    choices = CHOICES.get(where)
    if choices and value not in choices:
        note = f" ({CHOICE_NOTES[where]})" if where in CHOICE_NOTES else ""
        raise ConfigError(f"config key '{path}' must be one of {', '.join(map(str, choices))}, got {value!r}{note}")
    bounds = RANGES.get(where)
    if bounds:
        ok, text = _in_range(bounds, value)
        if not ok:
            raise ConfigError(f"config key '{path}' must be {text}, got {value!r}")
    spec = LENGTHS.get(where)
    if spec:
        _check_list(path, value, *spec)


def _check_list(path, value, n, kind, bounds=None):
    """A list of ``n`` (any number when None) items of ``kind`` (int, float, or (int, float) for numbers kept as
    given), each within ``bounds`` when given; float lists are converted in place."""
    if n is not None and len(value) != n:
        raise ConfigError(f"config key '{path}' must be a list of {n} numbers, got {value!r}")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    name = "number" if isinstance(kind, tuple) else kind.__name__
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
            raise ConfigError(f"config key '{path}' must hold {name}s, got {v!r} at position {i}")
        if bounds:
            ok, text = _in_range(bounds, v)
            if not ok:
                raise ConfigError(f"config key '{path}' must hold {name}s {text}, got {v!r} at position {i}")
    if kinds == (float,):
        value[:] = [float(v) for v in value]

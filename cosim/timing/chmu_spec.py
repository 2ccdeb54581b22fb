"""``cosim run --chmu SPEC``: a key=value list over the ``[chmu]`` configuration.

``tracker=space-saving,counters=1024,unit=4K,epoch=1ms`` reads as the
``[chmu]`` table with ``enabled = true`` and those fields; sizes take
K/M/G (bare numbers are bytes), times ns/us/ms/s. Every value is checked
against the field's range, and an error names the key as the user wrote it.
"""

from __future__ import annotations

import re
from dataclasses import fields, replace
from typing import Any, Callable

from ..errors import CosimError
from .config import ChmuConfig, Config, _check_chmu, _check_value

_SIZE = re.compile(r"(\d{1,15})([KMG]?)(?:I?B)?")
_TIME = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)(ns|us|ms|s)")
_TIME_SCALE_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


def _size(text: str) -> int:
    m = _SIZE.fullmatch(text.strip().upper())
    if not m:
        raise ValueError("want a size such as 4K, 256M or 1G (a bare number is bytes)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def time_ns(text: str) -> float:
    """Nanoseconds of a time with its unit ("500us", "1ms", "2s"); a ValueError says what
    is wanted (the callers turn it into their one-line error)."""
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise ValueError("want a time with its unit, such as 500us, 1ms or 2s")
    return float(m.group(1)) * _TIME_SCALE_NS[m.group(2)]


def _int(text: str) -> int:
    if not re.fullmatch(r"\d{1,15}", text.strip()):
        raise ValueError("want a whole number")
    return int(text)


def _text(text: str) -> str:
    return text.strip()


#: spec key -> (field, parser of the value)
KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "tracker": ("tracker", _text),
    "unit": ("unit_bytes", _size),
    "epoch": ("epoch_us", lambda t: time_ns(t) / 1e3),
    "threshold": ("threshold", _int),
    "capacity": ("hot_list", _int),
    "counters": ("counters", _int),
    "bits": ("counter_bits", _int),
    "access": ("access", _text),
    "mode": ("mode", _text),
    "downsample": ("downsample", _int),
    "depth": ("cm_depth", _int),
    "width": ("cm_width", _int),
    "sample-every": ("sample_every", _int),
    "sample-period": ("sample_period_ns", time_ns),
    "buffer": ("sample_buffer", _int),
    "epochs": ("report_epochs", _int),
    "samples": ("sample_file", _text),
}
#: ``range=BASE+SIZE`` sets two fields
RANGE_KEY = "range"

_ACCEPTED = {
    "unit_bytes": "a power of two from 256 B to 1G (256 B x 2^N)",
    "epoch_us": "a time from 100us to 100s",
    "sample_period_ns": "a time up to 1s (0ns: use sample-every)",
    "range_base": "BASE+SIZE, multiples of 256M, e.g. 0+256M",
    "range_size": "BASE+SIZE, multiples of 256M, e.g. 0+256M",
}


def apply(cfg: Config, spec: str) -> Config:
    """``cfg`` with the CHMU on and the spec's fields set; one-line errors name the key."""
    known = {f.name: f for f in fields(ChmuConfig)}
    key_of: dict[str, str] = {}
    raw_of: dict[str, str] = {}
    changes: dict[str, Any] = {"enabled": True}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq:
            raise CosimError(f"--chmu {item!r}: want key=value; keys: "
                             f"{', '.join([*KEYS, RANGE_KEY])}")
        if key == RANGE_KEY:
            base, plus, size = raw.partition("+")
            try:
                if not plus:
                    raise ValueError
                values = {"range_base": _size(base), "range_size": _size(size)}
            except ValueError:
                raise CosimError(f"--chmu range={raw}: want {_ACCEPTED['range_base']}") from None
        elif key in KEYS:
            name, parse = KEYS[key]
            try:
                values = {name: parse(raw)}
            except ValueError as e:
                raise CosimError(f"--chmu {key}={raw}: {e}") from None
        else:
            raise CosimError(f"--chmu {key}: unknown key; keys: {', '.join([*KEYS, RANGE_KEY])}")
        for name, value in values.items():
            key_of[name], raw_of[name] = key, raw
            try:
                changes[name] = _check_value(f"chmu.{name}", known[name], value)
            except CosimError as e:
                raise CosimError(_say(key, raw, name, str(e))) from None
    out = replace(cfg, chmu=replace(cfg.chmu, **changes))
    try:
        _check_chmu(out)
    except CosimError as e:
        name = str(e).split(" ", 2)[1].removeprefix("chmu.")
        if name in key_of:
            raise CosimError(_say(key_of[name], raw_of[name], name, str(e))) from None
        raise
    return out


def _say(key: str, raw: str, name: str, message: str) -> str:
    """The config checker's message, in the spec's terms."""
    accepted = _ACCEPTED.get(name) or message.split(": ", 1)[1]
    return f"--chmu {key}={raw}: {accepted}"

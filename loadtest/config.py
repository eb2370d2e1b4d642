"""ghz config files: keys, defaults, quirks, validation and the CLI merge rule.

    cfg = load_config("loadtest/configs/services/ingest-submit.json", overrides={"total": 50})

A config is a plain dict keyed by ghz's canonical key names; durations are int
nanoseconds. See /work/shared/reference/ghz.md section 1 and loadtest/README.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

MAX_INT32 = 2147483647
SCHEDULES = ("const", "step", "line")

# key -> (kind, default after loading a file). kinds: str bool uint int dur map data list
KEYS: dict[str, tuple[str, Any]] = {
    "host": ("str", ""), "call": ("str", ""), "proto": ("str", ""), "protoset": ("str", ""),
    "import-paths": ("list", []), "reflect-metadata": ("map", None),
    "insecure": ("bool", False), "skipTLS": ("bool", False), "cacert": ("str", ""),
    "cert": ("str", ""), "key": ("str", ""), "cname": ("str", ""), "authority": ("str", ""),
    "total": ("uint", 200), "concurrency": ("uint", 50), "connections": ("uint", 1),
    "async": ("bool", False), "rps": ("uint", 0), "load-schedule": ("str", "const"),
    "load-start": ("uint", 0), "load-step": ("int", 0), "load-end": ("uint", 0),
    "load-step-duration": ("dur", 0), "load-max-duration": ("dur", 0),
    "concurrency-schedule": ("str", "const"), "concurrency-start": ("uint", 1),
    "concurrency-step": ("int", 0), "concurrency-end": ("uint", 0),
    "concurrency-step-duration": ("dur", 0), "concurrency-max-duration": ("dur", 0),
    "duration": ("dur", 0), "max-duration": ("dur", 0), "duration-stop": ("str", "close"),
    "timeout": ("dur", 20 * 10**9), "connect-timeout": ("dur", 10 * 10**9),
    "keepalive": ("dur", 0), "data": ("data", None), "data-file": ("str", ""),
    "binary-file": ("str", ""), "metadata": ("map", None), "metadata-file": ("str", ""),
    "stream-interval": ("dur", 0), "stream-call-duration": ("dur", 0),
    "stream-call-count": ("uint", 0), "stream-dynamic-messages": ("bool", False),
    "enable-compression": ("bool", False), "lb-strategy": ("str", ""),
    "max-recv-message-size": ("str", ""), "max-send-message-size": ("str", ""),
    "disable-template-functions": ("bool", False), "disable-template-data": ("bool", False),
    "skipFirst": ("uint", 0), "count-errors": ("bool", False), "name": ("str", ""),
    "tags": ("map", None), "cpus": ("uint", 0), "format": ("str", "summary"),
    "output": ("str", ""), "debug": ("str", ""),
}
# kingpin's defaults where they differ from the file defaults (ghz.md 1.2).
CLI_DEFAULTS = {"concurrency-start": 0, "concurrency-step": 1}
FORMATS = ("summary", "csv", "json", "pretty", "html")
_FOLDED = {k.lower(): k for k in KEYS}
_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9,
          "m": 60 * 10**9, "h": 3600 * 10**9}
_DUR_RE = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")


class ConfigError(ValueError):
    """The config (file, flags or data) is invalid; ghz exits 1 on these."""


def parse_duration(value: Any, key: str = "duration") -> int:
    """Go ``time.ParseDuration`` -> int ns. A bare 0 is accepted, like ghz in JSON."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: invalid duration {value!r}")
    if isinstance(value, int | float):
        if value == 0:
            return 0
        raise ConfigError(f"{key}: time: missing unit in duration {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"{key}: invalid duration {value!r}")
    text, sign = value, 1
    if text and text[0] in "+-":
        sign, text = (-1 if text[0] == "-" else 1), text[1:]
    if text == "0":
        return 0
    if not text:
        raise ConfigError(f"{key}: time: invalid duration {value!r}")
    total, pos = 0.0, 0
    while pos < len(text):
        m = _DUR_RE.match(text, pos)
        if not m or m.group(1) in ("", "."):
            unitless = re.fullmatch(r"\d+(\.\d*)?", text[pos:])
            why = "missing unit in duration" if unitless else "invalid duration"
            raise ConfigError(f"{key}: time: {why} {value!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * int(round(total))


def _coerce(key: str, value: Any, fmt: str) -> Any:
    kind = KEYS[key][0]
    bad = ConfigError(f"{key}: expected {kind}, got {value!r}")
    if kind == "str":
        if not isinstance(value, str):
            raise bad
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind in ("uint", "int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        if kind == "uint" and value < 0:
            raise bad
        return value
    if kind == "dur":
        return parse_duration(value, key)
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        return value
    if kind == "map":
        if value is None:
            return None
        if not isinstance(value, dict):
            raise bad
        return {str(k): (v if isinstance(v, str) else json.dumps(v)) for k, v in value.items()}
    return check_data(value, fmt)


def check_data(value: Any, fmt: str = "json") -> Any:
    """ghz's data rules: an object or a non-empty array of objects (YAML: flat mapping)."""
    if value is None or isinstance(value, dict) and fmt != "yaml":
        return value
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict) or isinstance(v, list) and any(isinstance(i, dict) for i in v):
                raise ConfigError(f"data: nested YAML mapping under {k!r} is not supported by "
                                  "ghz (keep YAML data flat, or use JSON)")
        return value
    if isinstance(value, list):
        if not value:
            raise ConfigError("data: data array must not be empty")
        if fmt == "yaml" or not all(isinstance(v, dict) for v in value):
            raise ConfigError("data: data array contains unsupported type")
        return value
    raise ConfigError(f"data: unsupported type for Data: {type(value).__name__}")


def read_file(path: str | Path) -> tuple[dict, str]:
    """Parse a config file by extension (ghz: other extensions try TOML, JSON, YAML)."""
    p = Path(path)
    text = p.read_text()
    ext = p.suffix.lower()
    order = {".json": ["json"], ".toml": ["toml"], ".yaml": ["yaml"], ".yml": ["yaml"]}.get(
        ext, ["toml", "json", "yaml"])
    last: Exception | None = None
    for fmt in order:
        try:
            raw = {"json": json.loads, "toml": tomllib.loads, "yaml": yaml.safe_load}[fmt](text)
        except (ValueError, yaml.YAMLError) as exc:
            last = exc
            continue
        if not isinstance(raw, dict):
            last = ValueError("top level must be an object")
            continue
        return raw, fmt
    raise ConfigError(f"{path}: cannot parse config: {last}")


def from_mapping(raw: dict, fmt: str = "json", source: str = "config") -> dict:
    """Known keys of ``raw`` coerced to their types; unknown keys warned about and ignored."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        key = _FOLDED.get(str(name).lower()) if fmt in ("json", "toml") else None
        key = key or (name if name in KEYS else None)
        if key is None:
            log.warning("%s: unknown key %r ignored (as ghz does)", source, name)
            continue
        try:
            out[key] = _coerce(key, value, fmt)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return out


def defaults(cli: bool = False) -> dict:
    values = {k: (list(d) if isinstance(d, list) else d) for k, (_, d) in KEYS.items()}
    if cli:
        values.update(CLI_DEFAULTS)
    return values


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Defaults, then the file over them, then explicitly-set flags; then ghz's rules."""
    if path is None:
        cfg = defaults(cli=True)
    else:
        cfg = defaults()
        if Path(path).exists():
            raw, fmt = read_file(path)
            cfg.update(from_mapping(raw, fmt, str(path)))
        else:  # configor: a missing file is not an error
            log.warning("Failed to find configuration %s", path)
    for key, value in (overrides or {}).items():
        cfg[key] = _coerce(key, value, "json") if key in KEYS else value
    return normalize(cfg)


def _load_json_file(key: str, path: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if not text.strip():
        raise ConfigError("no data provided for request")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{key}: {path}: invalid JSON: {exc}") from None


def normalize(cfg: dict) -> dict:
    """Apply ghz's adjustments and validation (runner.NewConfig + options)."""
    if not cfg["call"]:
        raise ConfigError("call: a method is required (e.g. pkg.Service.Method)")
    if not cfg["host"]:
        raise ConfigError("host: a target host:port is required")
    if cfg["data-file"]:
        cfg["data"] = check_data(_load_json_file("data-file", cfg["data-file"]))
    if cfg["metadata-file"]:
        meta = _load_json_file("metadata-file", cfg["metadata-file"])
        cfg["metadata"] = _coerce("metadata", meta, "json")
    if cfg["max-duration"] > 0:
        cfg["duration"] = cfg["max-duration"]
    if cfg["duration"] > 0:
        cfg["total"] = MAX_INT32
    stop = cfg["duration-stop"].lower()
    cfg["duration-stop"] = stop if stop in ("close", "wait", "ignore") else "close"
    cfg["format"] = cfg["format"] or "summary"
    if cfg["format"] not in FORMATS:
        raise ConfigError(f"format: unsupported {cfg['format']!r}; one of {', '.join(FORMATS)}")
    if cfg["connections"] > cfg["concurrency"]:
        raise ConfigError(f"connections ({cfg['connections']}) must not exceed concurrency "
                          f"({cfg['concurrency']})")
    if cfg["connections"] == 0 or cfg["concurrency"] == 0 and cfg["concurrency-schedule"] == "const":
        raise ConfigError("concurrency and connections must be at least 1")
    _check_schedule(cfg, "load")
    _check_schedule(cfg, "concurrency")
    if cfg["skipFirst"] > cfg["total"]:
        raise ConfigError(f"skipFirst ({cfg['skipFirst']}) must not exceed total ({cfg['total']})")
    if cfg["total"] == 0:
        raise ConfigError("total must be at least 1 (or set a duration)")
    if cfg["cpus"] == 0:
        cfg["cpus"] = os.cpu_count() or 1
    return cfg


def _check_schedule(cfg: dict, kind: str) -> None:
    name = cfg[f"{kind}-schedule"].lower()
    if name not in SCHEDULES:
        if kind == "load":
            raise ConfigError(f"load-schedule: invalid {name!r}; one of const, step, line")
        log.warning("concurrency-schedule %r behaves as const (as in ghz)", name)
        name = "const"
    cfg[f"{kind}-schedule"] = name
    if name == "const":
        return
    if name == "line":
        cfg[f"{kind}-step-duration"] = 10**9
    if cfg[f"{kind}-start"] == cfg[f"{kind}-end"]:
        raise ConfigError(f"{kind}-start and {kind}-end must differ for a {name} schedule")
    if cfg[f"{kind}-step"] == 0:
        raise ConfigError(f"{kind}-step must not be 0 for a {name} schedule")
    if cfg[f"{kind}-step-duration"] <= 0:
        raise ConfigError(f"{kind}-step-duration is required for a step schedule")
    if kind == "load" and cfg["load-start"] == 0:
        raise ConfigError("load-start must be > 0 for a step/line load schedule")


def import_paths(cfg: dict) -> list[str]:
    """ghz's effective list: [proto dir (if not '.'), '.', ...import-paths]."""
    paths = []
    if cfg["proto"]:
        d = os.path.dirname(cfg["proto"]) or "."
        if d != ".":
            paths.append(d)
    return [*paths, ".", *cfg["import-paths"]]

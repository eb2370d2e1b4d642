"""``clawmesh load``: ghz-compatible command line.

    clawmesh load --config loadtest/configs/services/ingest-submit.json -n 500 -O json
    clawmesh load --config loadtest/configs/scenarios/d-mixed.manifest.json  # several at once

Exit codes: 0 done (even if calls failed, like ghz), 1 config/setup error, 2 an
``--assert`` failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from clawmesh.loadtest import asserts
from clawmesh.loadtest.config import KEYS, ConfigError, load_config
from clawmesh.loadtest.formats import render
from clawmesh.loadtest.parallel import execute, run_async
from clawmesh.loadtest.runner import RunError
from clawmesh.loadtest.templates import TemplateError

_SHORT = {"total": "-n", "concurrency": "-c", "duration": "-z", "max-duration": "-x",
          "rps": "-r", "format": "-O", "output": "-o", "data": "-d", "data-file": "-D",
          "metadata": "-m", "metadata-file": "-M", "timeout": "-t", "import-paths": "-i",
          "enable-compression": "-e", "binary-file": "-B"}


def _json_arg(text: str):
    if text == "@":
        return json.loads(sys.stdin.read())
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clawmesh load", description="ghz-compatible load runner",
                                argument_default=argparse.SUPPRESS)
    p.add_argument("host", nargs="?", help="target host:port (overrides the config's host)")
    p.add_argument("--config", help="ghz config file (JSON, TOML, YAML) or a manifest")
    p.add_argument("--assert", dest="asserts", action="append", metavar="EXPR",
                   help="e.g. p99<15ms, error_rate<0.01, rps>500 (exit 2 if one fails)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    for key, (kind, _) in KEYS.items():
        if key == "host":
            continue
        flags = [_SHORT[key]] if key in _SHORT else []
        flags.append(f"--{key}")
        if kind == "bool":
            p.add_argument(*flags, dest=key, action=argparse.BooleanOptionalAction)
        elif kind in ("uint", "int"):
            p.add_argument(*flags, dest=key, type=int)
        elif kind in ("map", "data"):
            p.add_argument(*flags, dest=key, type=_json_arg)
        elif kind == "list":
            p.add_argument(*flags, dest=key, type=lambda s: [x for x in s.split(",") if x])
        else:
            p.add_argument(*flags, dest=key)
    return p


class Progress:
    """A one-line bar on stderr: done/total or elapsed/duration."""

    def __init__(self, cfg: dict) -> None:
        self.total, self.duration = cfg["total"], cfg["duration"] / 1e9

    def __call__(self, done: int, elapsed: float) -> None:
        frac = elapsed / self.duration if self.duration else done / self.total
        frac = min(1.0, frac)
        bar = "=" * int(frac * 40)
        rate = done / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(f"\r[{bar:<40}] {frac * 100:5.1f}%  {done} done  {rate:8.1f}/s ")
        sys.stderr.flush()

    @staticmethod
    def finish() -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _entries(config: str | None) -> list[tuple[str | None, dict]] | None:
    """A manifest's (config path, overrides) entries, or None if it is a ghz config."""
    if not config or not config.endswith(".json") or not Path(config).exists():
        return None
    try:
        raw = json.loads(Path(config).read_text())
    except ValueError:
        return None
    if not isinstance(raw, dict) or "configs" not in raw:
        return None
    out = []
    for item in raw["configs"]:
        item = {"config": item} if isinstance(item, str) else dict(item)
        out.append((item.pop("config"), item))
    return out


def _write(cfg: dict, text: str, header: str | None) -> None:
    if cfg["output"]:
        Path(cfg["output"]).write_text(text)
    else:
        if header:
            sys.stdout.write(f"== {header} ==")
        sys.stdout.write(text)
        sys.stdout.flush()


async def _run_all(runs: list[tuple[str | None, dict]], progress: bool | None) -> list:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError):
        pass
    cfgs = [(path, load_config(path, overrides)) for path, overrides in runs]
    bar = None
    if len(cfgs) == 1 and (progress or progress is None and sys.stderr.isatty()):
        bar = Progress(cfgs[0][1])
    try:
        reports = await asyncio.gather(*(execute(cfg, bar, stop) for _, cfg in cfgs))
    finally:
        if bar:
            bar.finish()
    return [(path, cfg, rep) for (path, cfg), rep in zip(cfgs, reports, strict=True)]


def _is_config_file(value: str) -> bool:
    suffixes = (".json", ".toml", ".yaml", ".yml")
    return bool(value) and value.endswith(suffixes) and os.path.isfile(value)


def main(argv: list[str]) -> int:
    """Run ``clawmesh load ARGS``; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="clawmesh load: %(message)s")
    args = vars(build_parser().parse_args(argv))
    config = args.pop("config", None)
    # `clawmesh load CONFIG`: a positional that names a config file is the config, not a host.
    if config is None and _is_config_file(args.get("host", "")):
        config = args.pop("host")
    exprs = args.pop("asserts", [])
    progress = args.pop("progress", None)
    overrides = {k: v for k, v in args.items()}  # only flags the user set (SUPPRESS)
    manifest = _entries(config)
    runs = ([(path, {**entry, **overrides}) for path, entry in manifest] if manifest
            else [(config, overrides)])
    try:
        for e in exprs:
            asserts.parse(e)
        done = run_async(_run_all(runs, progress))
    except (ConfigError, RunError, TemplateError, OSError) as exc:
        print(f"clawmesh load: {exc}", file=sys.stderr)
        return 1
    failed = []
    for path, cfg, rep in done:
        fmt = "summary" if manifest and not cfg["output"] else cfg["format"]
        _write(cfg, render(rep, fmt), path if manifest and not cfg["output"] else None)
        failed += [f"{path}: {f}" if manifest else f for f in asserts.check(rep, exprs)]
    if failed:
        print("assertions failed:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Config files, ghz's quirks, validation and the CLI merge rule."""

from __future__ import annotations

import json
import logging

import pytest

from clawmesh.loadtest.cli import build_parser
from clawmesh.loadtest.config import MAX_INT32, ConfigError, import_paths, load_config, parse_duration

BASE = {"call": "a.B.C", "host": "127.0.0.1:1"}


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_file_defaults_differ_from_cli_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "c.json", json.dumps(BASE)))
    assert (cfg["concurrency-start"], cfg["concurrency-step"]) == (1, 0)
    assert (cfg["total"], cfg["concurrency"], cfg["connections"]) == (200, 50, 1)
    assert cfg["timeout"] == 20 * 10**9 and cfg["connect-timeout"] == 10 * 10**9
    assert cfg["format"] == "summary" and cfg["duration-stop"] == "close"
    assert cfg["insecure"] is False  # TLS by default
    cli = load_config(None, BASE)
    assert (cli["concurrency-start"], cli["concurrency-step"]) == (0, 1)


def test_json_keys_are_case_insensitive_yaml_are_not(tmp_path, caplog):
    cfg = load_config(write(tmp_path, "c.json", json.dumps(
        {"CALL": "a.B.C", "Host": "h:1", "SKIPFIRST": 3, "Insecure": True, "Total": 7})))
    assert (cfg["call"], cfg["host"], cfg["skipFirst"], cfg["insecure"], cfg["total"]) == (
        "a.B.C", "h:1", 3, True, 7)
    with caplog.at_level(logging.WARNING):
        cfg = load_config(write(tmp_path, "c.yaml", "call: a.B.C\nhost: h:1\nInsecure: true\n"))
    assert cfg["insecure"] is False
    assert "Insecure" in caplog.text


def test_unknown_keys_are_ignored_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_config(write(tmp_path, "c.json", json.dumps({**BASE, "n": 10, "qps": 5})))
    assert cfg["total"] == 200 and cfg["rps"] == 0
    assert "'n'" in caplog.text and "'qps'" in caplog.text


def test_toml_and_other_extensions(tmp_path):
    cfg = load_config(write(tmp_path, "c.toml", 'call = "a.B.C"\nhost = "h:1"\ntotal = 9\n'
                            '[data]\nmessage = "hi"\n'))
    assert cfg["total"] == 9 and cfg["data"] == {"message": "hi"}
    cfg = load_config(write(tmp_path, "c.conf", json.dumps({**BASE, "total": 4})))
    assert cfg["total"] == 4


@pytest.mark.parametrize("text,ns", [
    ("10s", 10 * 10**9), ("500ms", 500 * 10**6), ("1m30s", 90 * 10**9), ("1.5h", 5400 * 10**9),
    ("0", 0), (0, 0), ("250us", 250_000), ("2µs", 2000), ("3ns", 3), ("-1s", -(10**9)),
])
def test_go_durations(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text,msg", [(5, "missing unit"), ("10", "missing unit"),
                                      ("asdf", "invalid duration"), ("", "invalid"),
                                      (True, "invalid")])
def test_bad_durations(text, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_duration(text)


def test_zero_timeout_in_a_file_means_none(tmp_path):
    assert load_config(write(tmp_path, "c.json", json.dumps({**BASE, "timeout": "0s"})))[
        "timeout"] == 0


def test_duration_and_max_duration_ignore_total():
    cfg = load_config(None, {**BASE, "duration": "5s", "total": 10})
    assert cfg["total"] == MAX_INT32
    cfg = load_config(None, {**BASE, "duration": "5s", "max-duration": "2s", "total": 10})
    assert cfg["duration"] == 2 * 10**9 and cfg["total"] == MAX_INT32


@pytest.mark.parametrize("data,msg", [
    ("hello", "unsupported type for Data"), (5, "unsupported type for Data"),
    ([], "must not be empty"), ([{"a": 1}, 2], "unsupported type"),
])
def test_data_validation(data, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, {**BASE, "data": data})


def test_yaml_data_quirks(tmp_path):
    ok = load_config(write(tmp_path, "ok.yaml", "call: a.B.C\nhost: h:1\ndata:\n  name: x\n"
                           "  tags: [a, b]\n"))
    assert ok["data"] == {"name": "x", "tags": ["a", "b"]}
    with pytest.raises(ConfigError, match="unsupported type"):
        load_config(write(tmp_path, "l.yaml", "call: a.B.C\nhost: h:1\ndata:\n  - name: x\n"))
    with pytest.raises(ConfigError, match="nested YAML"):
        load_config(write(tmp_path, "n.yaml", "call: a.B.C\nhost: h:1\ndata:\n  m:\n    a: 1\n"))


def test_data_file_and_empty_data_file(tmp_path):
    f = write(tmp_path, "d.json", '[{"message": "a"}, {"message": "b"}]')
    assert load_config(None, {**BASE, "data-file": f})["data"][1] == {"message": "b"}
    empty = write(tmp_path, "e.json", "")
    with pytest.raises(ConfigError, match="no data provided"):
        load_config(None, {**BASE, "data-file": empty})


@pytest.mark.parametrize("keys,msg", [
    ({"call": ""}, "call"), ({"host": ""}, "host"),
    ({"connections": 5, "concurrency": 2}, "connections"),
    ({"skipFirst": 300}, "skipFirst"), ({"load-schedule": "ramp"}, "load-schedule"),
    ({"load-schedule": "step", "load-start": 5, "load-step": 5}, "step-duration"),
    ({"load-schedule": "step", "load-start": 5, "load-end": 5, "load-step": 1,
      "load-step-duration": "1s"}, "must differ"),
    ({"load-schedule": "line", "load-start": 5, "load-step": 0}, "must not be 0"),
    ({"concurrency-schedule": "step", "concurrency-step": 2, "concurrency-start": 1},
     "step-duration"),
    ({"format": "prometheus"}, "format"), ({"total": -1}, "expected uint"),
    ({"insecure": "yes"}, "expected bool"),
])
def test_validation_errors(keys, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, {**BASE, **keys})


def test_normalization_quirks():
    cfg = load_config(None, {**BASE, "duration-stop": "WAIT", "load-schedule": "LINE",
                             "load-start": 1, "load-step": 2})
    assert cfg["duration-stop"] == "wait" and cfg["load-schedule"] == "line"
    assert cfg["load-step-duration"] == 10**9
    assert load_config(None, {**BASE, "duration-stop": "bogus"})["duration-stop"] == "close"
    assert load_config(None, {**BASE, "cpus": 0})["cpus"] >= 1


def test_import_paths():
    cfg = load_config(None, {**BASE, "proto": "protos/x/y.proto", "import-paths": ["protos"]})
    assert import_paths(cfg) == ["protos/x", ".", "protos"]
    assert import_paths(load_config(None, {**BASE, "proto": "y.proto"})) == ["."]


def test_cli_flags_override_file_only_when_set(tmp_path):
    path = write(tmp_path, "c.json", json.dumps({**BASE, "total": 100, "concurrency": 7,
                                                  "rps": 50}))
    args = vars(build_parser().parse_args(["--config", path, "-n", "5", "127.0.0.1:9",
                                           "-d", '{"message": "x"}', "--insecure"]))
    path = args.pop("config")
    cfg = load_config(path, args)
    assert (cfg["total"], cfg["concurrency"], cfg["rps"]) == (5, 7, 50)
    assert cfg["host"] == "127.0.0.1:9" and cfg["data"] == {"message": "x"}
    assert cfg["insecure"] is True


def test_missing_file_is_not_an_error(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_config(str(tmp_path / "nope.json"), BASE)
    assert cfg["total"] == 200 and "Failed to find configuration" in caplog.text

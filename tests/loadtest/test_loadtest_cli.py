"""The command line: output formats on stdout/files, --assert exit codes, manifests."""

from __future__ import annotations

import json

from clawmesh.loadtest.cli import main
from clawmesh.loadtest.config import ConfigError

PROTO = "protos/clawmesh/testing/v1/echo.proto"


def args(echo, *extra):
    return [echo.address, "--insecure", "--proto", PROTO, "--call",
            "clawmesh.testing.v1.EchoService.Echo", "-n", "40", "-c", "2", "--cpus", "1",
            "-d", '[{"message": "a"}, {"message": "error:INTERNAL"}]', *extra]


def test_json_on_stdout_is_clean(echo, capsys):
    assert main(args(echo, "-O", "json", "--progress")) == 0
    out, err = capsys.readouterr()
    rep = json.loads(out)
    assert rep["count"] == 40 and rep["statusCodeDistribution"] == {"OK": 20, "Internal": 20}
    assert "done" in err  # the progress bar went to stderr


def test_asserts_exit_2_and_list_failures(echo, capsys):
    code = main(args(echo, "-O", "csv", "--assert", "p99<1ns", "--assert", "error_rate<0.01",
                     "--assert", "count==40"))
    out, err = capsys.readouterr()
    assert code == 2
    assert "p99<1ns" in err and "error_rate<0.01 (actual error_rate=0.5)" in err
    assert "count==40" not in err
    assert out.startswith("\nduration (ms),status,error\n")
    assert main(args(echo, "-O", "json", "--assert", "p99<10s", "--assert", "rps>1")) == 0


def test_config_errors_exit_1(echo, capsys, tmp_path):
    assert main(args(echo, "--assert", "p99~1")) == 1
    assert main([echo.address, "--call", "x"]) == 1
    assert "call" in capsys.readouterr().err
    assert main(args(echo, "-d", '{"nope": 1}')) == 1


def test_output_file_and_config_file(echo, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    out = tmp_path / "r.html"
    cfg.write_text(f"call: clawmesh.testing.v1.EchoService.Echo\nhost: {echo.address}\n"
                   f"insecure: true\nproto: {PROTO}\ntotal: 5\nconcurrency: 1\ncpus: 1\n"
                   f"format: html\noutput: {out}\ndata:\n  message: hi\n")
    assert main(["--config", str(cfg), "-n", "7"]) == 0
    assert capsys.readouterr().out == ""
    assert "<td>7</td>" in out.read_text()


def test_manifest_runs_configs_concurrently(echo, tmp_path, capsys):
    paths = []
    for i, method in enumerate(["Echo", "ServerStream"]):
        p = tmp_path / f"c{i}.json"
        p.write_text(json.dumps({"call": f"clawmesh.testing.v1.EchoService.{method}",
                                 "host": echo.address, "insecure": True, "proto": PROTO,
                                 "total": 10, "concurrency": 2, "cpus": 1,
                                 "data": {"message": "m", "count": 2} if i else {"message": "m"}}))
        paths.append(str(p))
    manifest = tmp_path / "mixed.manifest.json"
    manifest.write_text(json.dumps({"configs": [paths[0], {"config": paths[1], "total": 4}]}))
    assert main(["--config", str(manifest), "--assert", "error_rate==0"]) == 0
    out = capsys.readouterr().out
    assert f"== {paths[0]} ==" in out and f"== {paths[1]} ==" in out
    assert "  Count:\t10\n" in out and "  Count:\t4\n" in out


def test_config_error_type_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_positional_config_file_is_the_config(echo, tmp_path, capsys):
    cfg = tmp_path / "echo.json"
    cfg.write_text(json.dumps({
        "host": echo.address, "insecure": True, "proto": PROTO, "total": 10, "concurrency": 2,
        "cpus": 1, "call": "clawmesh.testing.v1.EchoService.Echo", "data": {"message": "x"},
        "format": "json",
    }))
    assert main([str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 10

"""Report statistics and formats against hand-built result sets (exact output)."""

from __future__ import annotations

import json

import pytest

from clawmesh.loadtest.config import load_config
from clawmesh.loadtest.formats import format_nano, render
from clawmesh.loadtest.report import Result, Struct, build_report, go_json, percentiles, report_options

T0 = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z
ERR = "rpc error: code = Unavailable desc = transport is closing"
MS = 1_000_000


def results():
    lats = [15, 20, 35, 40, 50]
    out = [Result(T0 + i * 1000, lat * MS, "OK", "") for i, lat in enumerate(lats)]
    out.insert(2, Result(T0 + 1500, 100 * MS, "Unavailable", ERR))
    return out


def report(**kw):
    args = dict(total_ns=2 * 10**9, end_reason="normal", options=Struct(call="a.B.C"),
                date_ns=T0)
    args.update(kw)
    return build_report(results(), **args)


def test_percentiles_match_ghz_tests():
    lats = [0.015, 0.020, 0.035, 0.040, 0.050]
    assert [p["latency"] for p in percentiles(lats)] == [15 * MS, 20 * MS, 35 * MS, 40 * MS,
                                                         50 * MS, 50 * MS, 50 * MS]
    assert percentiles([0.0, 0.5])[0] == {"percentage": 0, "latency": 0}


def test_statistics(utc):
    rep = report()
    assert rep["count"] == 6
    assert rep["average"] == 43333333  # errors included in the average
    assert (rep["fastest"], rep["slowest"]) == (15 * MS, 50 * MS)  # errors excluded
    assert rep["rps"] == 3.0
    assert rep["statusCodeDistribution"] == {"OK": 5, "Unavailable": 1}
    assert rep["errorDistribution"] == {ERR: 1}
    assert [b["count"] for b in rep["histogram"]] == [1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 1]
    assert rep["histogram"][1]["mark"] == 0.0185
    counted = report(count_errors=True)
    assert counted["slowest"] == 100 * MS and sum(b["count"] for b in counted["histogram"]) == 6


def test_skip_first_drops_in_completion_order(utc):
    rep = report(skip_first=3)  # 15, 20 and the error
    assert rep["count"] == 3 and rep["errorDistribution"] == {}
    assert rep["fastest"] == 35 * MS and rep["total"] == 2 * 10**9


def test_all_errors():
    rep = build_report([Result(T0, 5 * MS, "Unavailable", ERR)], total_ns=10**9,
                       end_reason="timeout", options=Struct(), date_ns=T0)
    assert (rep["fastest"], rep["slowest"], rep["average"]) == (0, 0, 5 * MS)
    assert rep["latencyDistribution"] is None and rep["histogram"] is None
    text = render(rep, "summary")
    assert "  Fastest:\t0 ns\n" in text and "Response time histogram:\n\nLatency distribution:\n\n"\
        in text


def test_json_exact(utc):
    rep = report(name="t1", tags={"env": "ci"})
    expected = (
        '{"date":"2023-11-14T22:13:20Z","name":"t1","endReason":"normal",'
        '"options":{"call":"a.B.C"},"count":6,"total":2000000000,"average":43333333,'
        '"fastest":15000000,"slowest":50000000,"rps":3,'
        '"errorDistribution":{"rpc error: code = Unavailable desc = transport is closing":1},'
        '"statusCodeDistribution":{"OK":5,"Unavailable":1},"latencyDistribution":['
        '{"percentage":10,"latency":15000000},{"percentage":25,"latency":20000000},'
        '{"percentage":50,"latency":35000000},{"percentage":75,"latency":40000000},'
        '{"percentage":90,"latency":50000000},{"percentage":95,"latency":50000000},'
        '{"percentage":99,"latency":50000000}],"histogram":[')
    text = render(rep, "json")
    assert text.startswith(expected)
    assert text.endswith('"tags":{"env":"ci"}}')
    parsed = json.loads(text)
    assert parsed["details"][0] == {"timestamp": "2023-11-14T22:13:20Z", "latency": 15000000,
                                    "error": "", "status": "OK"}
    assert parsed["details"][1]["timestamp"] == "2023-11-14T22:13:20.000001Z"
    assert parsed["histogram"][0] == {"mark": 0.015, "count": 1, "frequency": 0.2}
    pretty = render(rep, "pretty")
    assert pretty.startswith('{\n  "date": "2023-11-14T22:13:20Z",\n  "name": "t1",\n')
    assert json.loads(pretty) == parsed and not pretty.endswith("\n")


def test_summary_exact(utc):
    text = render(report(), "summary")
    assert text == (
        "\nSummary:\n  Count:\t6\n  Total:\t2.00 s\n  Slowest:\t50.00 ms\n"
        "  Fastest:\t15.00 ms\n  Average:\t43.33 ms\n  Requests/sec:\t3.00\n\n"
        "Response time histogram:\n"
        "  15.000 [1] |∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎\n"
        "  18.500 [0] |\n"
        "  22.000 [1] |∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎\n"
        "  25.500 [0] |\n  29.000 [0] |\n  32.500 [0] |\n"
        "  36.000 [1] |∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎\n"
        "  39.500 [0] |\n"
        "  43.000 [1] |∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎\n"
        "  46.500 [0] |\n"
        "  50.000 [1] |∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎\n\n"
        "Latency distribution:\n  10 % in 15.00 ms \n  25 % in 20.00 ms \n"
        "  50 % in 35.00 ms \n  75 % in 40.00 ms \n  90 % in 50.00 ms \n"
        "  95 % in 50.00 ms \n  99 % in 50.00 ms \n\n"
        "Status code distribution:\n  [OK]            5 responses   \n"
        "  [Unavailable]   1 responses   \n\n"
        "Error distribution:\n  [1]   " + ERR + "   \n\n")


def test_csv_exact(utc):
    assert render(report(), "csv") == (
        "\nduration (ms),status,error\n15.00,OK,\n20.00,OK,\n100.00,Unavailable," + ERR
        + "\n35.00,OK,\n40.00,OK,\n50.00,OK,\n")


def test_html_is_self_contained(utc):
    page = render(report(), "html")
    assert page.startswith("<!DOCTYPE html>") and "class='bar'" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


@pytest.mark.parametrize("ns,text", [(9999, "9999 ns"), (10_000, "0.01 ms"),
                                     (999_994_999, "999.99 ms"), (1_500_000_000, "1.50 s")])
def test_format_nano(ns, text):
    assert format_nano(ns) == text


def test_go_json_escaping_and_floats():
    assert go_json({"b": "<&>\n", "a": 1e-7, "c": 1.0}) == '{"a":1e-7,"b":"\\u003c\\u0026\\u003e\\n","c":1}'
    assert go_json(Struct(z=[], a={})) == '{"z":[],"a":{}}'


def test_options_shape():
    cfg = load_config(None, {"call": "a.B.C", "host": "h:1", "insecure": True,
                             "proto": "protos/x.proto", "duration": "1s", "data": {"m": "x"},
                             "cpus": 2})
    opts = report_options(cfg, ["protos", "."])
    assert list(opts)[:5] == ["call", "host", "proto", "import-paths", "insecure"]
    assert opts["total"] == 2147483647 and opts["duration"] == 10**9
    assert opts["dial-timeout"] == 10 * 10**9 and opts["CPUs"] == 2
    assert opts["load-schedule"] == "const" and opts["binary"] is False
    assert "rps" not in opts and "connect-timeout" not in opts

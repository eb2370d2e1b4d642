"""The Go text/template subset and the template functions."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clawmesh.loadtest.templates import Template, TemplateError, call_data

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


class FakeMethod:
    full_name = "clawmesh.testing.v1.EchoService.Echo"
    name = "Echo"
    client_streaming = False
    server_streaming = False

    class containing_service:  # noqa: N801 - mimics the descriptor attribute
        name = "EchoService"

    class input_type:  # noqa: N801
        name = "EchoRequest"

    class output_type:  # noqa: N801
        name = "EchoResponse"


def render(text: str, r: int = 7, wid: str = "g1c0", **kw) -> str:
    t = Template(text, **kw)
    return t.render(call_data(t.fields, r, wid, FakeMethod))


def test_fields():
    assert render("{{.RequestNumber}}/{{.WorkerID}}") == "7/g1c0"
    assert render("{{.MethodName}} {{.ServiceName}} {{.InputName}} {{.OutputName}}") == (
        "Echo EchoService EchoRequest EchoResponse")
    assert render("{{.FullyQualifiedName}} {{.IsClientStreaming}}") == (
        "clawmesh.testing.v1.EchoService.Echo false")
    assert re.fullmatch(r"\d{10}", render("{{.TimestampUnix}}"))


def test_uuid_is_stable_within_a_call_new_uuid_is_not():
    a, b = render("{{.UUID}} {{.UUID}}").split()
    assert a == b and re.fullmatch(UUID_RE, a)
    c, d = render("{{newUUID}} {{newUUID}}").split()
    assert c != d and re.fullmatch(UUID_RE, c)


def test_ghz_functions():
    assert re.fullmatch(r"[a-zA-Z0-9]{8}", render("{{randomString 8}}"))
    assert 2 <= len(render("{{randomString 0}}")) <= 16
    values = {int(render("{{randomInt 1 4}}")) for _ in range(200)}
    assert values == {1, 2, 3}
    assert render("{{randomInt -5 0}}") == "0"  # min<0 -> 0, max<=0 -> 1


def test_sprig_functions():
    assert re.fullmatch(UUID_RE, render("{{uuidv4}}"))
    assert re.fullmatch(r"[a-zA-Z0-9]{12}", render("{{randAlphaNum 12}}"))
    assert re.fullmatch(r"\d{6}", render("{{randNumeric 6}}"))
    assert render("{{add 1 2 3}} {{add1 4}} {{sub 9 2}} {{mul 2 3}} {{div 7 2}} {{mod 7 3}}") == (
        "6 5 7 6 3 1")
    assert render("{{upper `ab`}} {{lower `CD`}} {{b64enc `hi`}}") == "AB cd " + (
        base64.b64encode(b"hi").decode())
    assert render("{{now | date `2006`}}") == str(dt.datetime.now().year)
    assert render("{{printf `%05d-%s` 42 .WorkerID}}") == "00042-g1c0"
    assert render("{{default `x` ``}} {{quote `a`}}") == 'x "a"'


def test_pipelines_parentheses_trim_and_comments():
    assert render("{{ .RequestNumber | add 10 }}") == "17"
    assert render("{{ upper (printf `w-%v` .WorkerID) }}") == "W-G1C0"
    assert render("a  {{- .RequestNumber -}}  b") == "a7b"
    assert render("x{{/* note */}}y") == "xy"


def test_json_data_template_round_trip():
    data = {"id": "{{.RequestNumber}}", "name": "u-{{randomString 4}}"}
    out = json.loads(render(json.dumps(data)))
    assert out["id"] == "7" and len(out["name"]) == 6


def test_dynamic_detection():
    assert not Template('{"a": "b"}').dynamic
    assert Template('{"a": "{{.UUID}}"}').dynamic


@pytest.mark.parametrize("text,msg", [
    ("{{if .UUID}}x{{end}}", "not supported"),
    ("{{range .X}}{{end}}", "not supported"),
    ("{{nope 1}}", 'function "nope" not defined'),
    ("{{.Nope}}", "can't evaluate field Nope"),
    ("{{$x := 1}}", "variables"),
    (json.dumps({"d": '{{date "2006" now}}'}), "backquotes"),
    ("{{.RequestNumber 5}}", "non-function"),
    ("{{ (upper `a` }}", "unclosed"),
])
def test_unsupported_or_bad_templates(text, msg):
    with pytest.raises(TemplateError, match=msg):
        render(text)


def test_disabled_functions():
    with pytest.raises(TemplateError, match="disabled"):
        Template("{{newUUID}}", functions=False)
    assert render("{{.RequestNumber}}", functions=False) == "7"


@given(st.text().filter(lambda s: "{{" not in s))
def test_text_without_actions_is_unchanged(text):
    t = Template(text)
    assert not t.dynamic and t.render({}) == text

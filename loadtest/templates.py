"""The subset of Go text/template that ghz data and metadata use.

    t = Template('{"id": "{{.RequestNumber}}", "u": "{{newUUID}}"}')
    t.render(call_data(t.fields, request_number=3, worker_id="g0c0", method=...))

Supported: text, ``{{.Field}}``, literals (numbers, "strings", `raw strings`, true/false),
function calls with arguments, parenthesised sub-pipelines, ``|`` pipelines,
``{{- -}}`` trimming and ``{{/* comments */}}``. Not supported (clear error):
if/range/with/define/template/block, variables ($x), method chains on values.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from clawmesh.loadtest import tfuncs

CALL_FIELDS = (
    "RequestNumber", "WorkerID", "FullyQualifiedName", "MethodName", "ServiceName",
    "InputName", "OutputName", "IsClientStreaming", "IsServerStreaming", "Timestamp",
    "TimestampUnix", "TimestampUnixMilli", "TimestampUnixNano", "UUID",
)
_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break",
             "continue"}
_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*") | (?P<raw>`[^`]*`) | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<field>(?:\.[A-Za-z_]\w*)+|\.) | (?P<var>\$\w*) | (?P<ident>[A-Za-z_]\w*)
  | (?P<op>[|()]) | (?P<bad>\S) )""", re.X)


class TemplateError(ValueError):
    """The template uses something outside the supported subset, or fails to run."""


class Template:
    """A parsed template; ``dynamic`` is False when it has no action (ghz caches those)."""

    def __init__(self, text: str, functions: bool = True, name: str = "data") -> None:
        self.text, self.name, self.fields = text, name, set()
        self._funcs: dict[str, Callable] = tfuncs.FUNCS if functions else {}
        self._parts: list[Any] = []  # str literals and parsed pipelines
        pos, trim_next = 0, False
        for m in _ACTION.finditer(text):
            literal = text[pos:m.start()]
            if trim_next:
                literal = literal.lstrip()
            if m.group(1):
                literal = literal.rstrip()
            self._parts.append(literal)
            trim_next, pos = bool(m.group(3)), m.end()
            body = m.group(2).strip()
            if body.startswith("/*") and body.endswith("*/"):
                continue
            self._parts.append(self._parse(body))
        tail = text[pos:]
        self._parts.append(tail.lstrip() if trim_next else tail)
        if "{{" in tail:
            raise TemplateError(f"template: {name}: unclosed action")
        self.dynamic = any(not isinstance(p, str) for p in self._parts)

    def _parse(self, body: str) -> list:
        tokens = []
        for m in _TOKEN.finditer(body):
            kind = m.lastgroup
            value = m.group(kind)
            if kind == "bad":
                hint = ""
                if value == "\\":
                    hint = (" (data is JSON-encoded before templating, as in ghz: write string "
                            "literals with backquotes, e.g. {{date `2006-01-02` now}})")
                raise TemplateError(f"template: {self.name}: unexpected {value!r} in "
                                    f"{{{{{body}}}}}{hint}")
            if kind == "var":
                raise TemplateError(f"template: {self.name}: variables ({value}) are not "
                                    "supported by clawmesh load")
            tokens.append((kind, value))
        if tokens and tokens[0][0] == "ident" and tokens[0][1] in _KEYWORDS:
            raise TemplateError(f"template: {self.name}: {{{{{tokens[0][1]}}}}} is not supported "
                                "by clawmesh load (supported: fields, functions, pipelines)")
        pipe, rest = self._pipeline(tokens, body)
        if rest:
            raise TemplateError(f"template: {self.name}: unexpected ')' in {{{{{body}}}}}")
        return pipe

    def _pipeline(self, tokens: list, body: str) -> tuple[list, list]:
        commands, cmd = [], []
        while tokens:
            kind, value = tokens[0]
            if value == ")" and kind == "op":
                break
            tokens = tokens[1:]
            if kind == "op" and value == "|":
                if not cmd:
                    raise TemplateError(f"template: {self.name}: missing command in {{{{{body}}}}}")
                commands.append(cmd)
                cmd = []
            elif kind == "op" and value == "(":
                sub, tokens = self._pipeline(tokens, body)
                if not tokens:
                    raise TemplateError(f"template: {self.name}: unclosed '(' in {{{{{body}}}}}")
                tokens = tokens[1:]
                cmd.append(("pipe", sub))
            else:
                cmd.append(self._operand(kind, value))
        if not cmd:
            raise TemplateError(f"template: {self.name}: empty command in {{{{{body}}}}}")
        commands.append(cmd)
        return commands, tokens

    def _operand(self, kind: str, value: str) -> tuple:
        if kind == "str":
            try:
                return ("lit", json.loads(value))
            except ValueError:
                raise TemplateError(f"template: {self.name}: bad string {value}") from None
        if kind == "raw":
            return ("lit", value[1:-1])
        if kind == "num":
            return ("lit", float(value) if re.search(r"[.eE]", value) else int(value))
        if kind == "field":
            if value == ".":
                return ("dot", None)
            path = value[1:].split(".")
            if path[0] not in CALL_FIELDS:
                raise TemplateError(f"template: {self.name}: can't evaluate field {path[0]} "
                                    f"(known: {', '.join(CALL_FIELDS)})")
            self.fields.add(path[0])
            return ("field", path[0])
        if value in ("true", "false"):
            return ("lit", value == "true")
        if value == "nil":
            return ("lit", None)
        if value not in self._funcs:
            raise TemplateError(f'template: {self.name}: function "{value}" not defined'
                                + ("" if self._funcs else " (template functions are disabled)"))
        return ("func", value)

    def _eval_pipe(self, commands: list, ctx: dict) -> Any:
        result, piped = None, False
        for cmd in commands:
            head = cmd[0]
            if head[0] == "func":
                args = [self._eval_arg(a, ctx) for a in cmd[1:]]
                if piped:
                    args.append(result)
                try:
                    result = self._funcs[head[1]](*args)
                except TemplateError:
                    raise
                except Exception as exc:  # a function's own failure, e.g. bad argument type
                    raise TemplateError(f"template: {self.name}: {head[1]}: {exc}") from exc
            else:
                if len(cmd) > 1 or piped:
                    raise TemplateError(f"template: {self.name}: can't give argument to "
                                        "non-function")
                result = self._eval_arg(head, ctx)
            piped = True
        return result

    def _eval_arg(self, node: tuple, ctx: dict) -> Any:
        kind, value = node
        if kind == "lit":
            return value
        if kind == "field":
            return ctx[value]
        if kind == "dot":
            return ctx
        if kind == "pipe":
            return self._eval_pipe(value, ctx)
        return self._funcs[value]()  # a bare function name as an argument: a niladic call

    def render(self, ctx: dict) -> str:
        """Execute against call data ``ctx`` (see :func:`call_data`)."""
        out = []
        for part in self._parts:
            out.append(part if isinstance(part, str) else
                       tfuncs.go_print(self._eval_pipe(part, ctx)))
        return "".join(out)


def call_data(fields: set[str], request_number: int, worker_id: str, method: Any,
              now_ns: int | None = None) -> dict:
    """ghz's ``runner.CallData`` for one call (only the fields a template uses)."""
    ctx: dict[str, Any] = {"RequestNumber": request_number, "WorkerID": worker_id}
    if not fields - ctx.keys():
        return ctx
    ns = time.time_ns() if now_ns is None else now_ns
    ctx.update({
        "FullyQualifiedName": method.full_name, "MethodName": method.name,
        "ServiceName": method.containing_service.name, "InputName": method.input_type.name,
        "OutputName": method.output_type.name,
        "IsClientStreaming": method.client_streaming, "IsServerStreaming": method.server_streaming,
        "Timestamp": tfuncs.rfc3339(ns // 10**9), "TimestampUnix": ns // 10**9,
        "TimestampUnixMilli": ns // 10**6, "TimestampUnixNano": ns,
        "UUID": str(uuid.uuid4()),
    })
    return ctx

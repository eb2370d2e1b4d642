"""Template functions: ghz's own, the common sprig v3 ones and Go's builtins.

Values print as Go's ``fmt.Sprint`` would (``true``, ``<no value>``, ``1e+06``).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import random
import re
import string
import urllib.parse
import uuid
from decimal import Decimal
from typing import Any

_ALNUM = string.ascii_letters + string.digits


def go_float(x: float, json: bool = False) -> str:
    """Go ``%v`` of a float64 (shortest digits; exponent when exp < -4 or >= 6), or
    encoding/json's form (exponent only below 1e-6 or from 1e21, written ``1e-7``)."""
    if x != x or x in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(x)]
    d = Decimal(repr(x))
    sign, digits, exp = d.as_tuple()
    digs = "".join(map(str, digits)).rstrip("0") or "0"
    e10 = len(digits) + exp - 1
    lo, hi = (-6, 21) if json else (-4, 6)
    if x != 0 and (e10 < lo or e10 >= hi):
        mant = digs[0] + ("." + digs[1:] if len(digs) > 1 else "")
        width = "" if json else "02"
        return f"{'-' if sign else ''}{mant}e{'-' if e10 < 0 else '+'}{abs(e10):{width}d}"
    return format(d.normalize(), "f") if d != d.to_integral() else str(int(d))


def go_time(t: dt.datetime) -> str:
    """Go ``time.Time.String()`` (without the monotonic clock suffix)."""
    frac = f".{t.microsecond:06d}".rstrip("0").rstrip(".")
    return t.strftime("%Y-%m-%d %H:%M:%S") + frac + t.strftime(" %z %Z")


def go_print(v: Any) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, dt.datetime):
        return go_time(v)
    if isinstance(v, list):
        return "[" + " ".join(go_print(i) for i in v) + "]"
    return str(v)


def rfc3339(seconds: int) -> str:
    """RFC 3339 with second precision in the local zone, as Go formats it (``Z`` for UTC)."""
    s = dt.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def _rand(chars: str, n: Any) -> str:
    return "".join(random.choices(chars, k=max(0, to_int(n))))


def random_string(n: Any = 0) -> str:
    """ghz ``randomString``: N chars of [a-zA-Z0-9]; N <= 0 means a random length in [2,16]."""
    n = to_int(n)
    return _rand(_ALNUM, n if n > 0 else random.randint(2, 16))


def random_int(lo: Any, hi: Any) -> int:
    """ghz ``randomInt``: [min, max); min < 0 -> 0, max <= 0 -> 1."""
    lo, hi = max(0, to_int(lo)), to_int(hi)
    hi = 1 if hi <= 0 else hi
    if hi <= lo:
        raise ValueError(f"invalid argument to Intn (min {lo} >= max {hi})")
    return random.randrange(lo, hi)


def to_int(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int | float):
        return int(v)
    if isinstance(v, str):
        try:
            return int(float(v)) if v.strip() else 0
        except ValueError:
            return 0
    return 0


_LAYOUT = [("January", "%B"), ("Monday", "%A"), ("2006", "%Y"), ("Jan", "%b"), ("Mon", "%a"),
           ("MST", "%Z"), ("Z07:00", "%:z"), ("-07:00", "%:z"), ("-0700", "%z"), ("01", "%m"),
           ("02", "%d"), ("15", "%H"), ("03", "%I"), ("04", "%M"), ("05", "%S"), ("06", "%y"),
           ("PM", "%p"), (".000000", ".%f"), (".000", ".%3"), ("_2", "%e")]
_LAYOUT_RE = re.compile("|".join(re.escape(k) for k, _ in _LAYOUT))


def go_date(layout: str, t: Any) -> str:
    """sprig ``date``: format a time with a Go reference layout (common tokens)."""
    if not isinstance(t, dt.datetime):
        t = dt.datetime.fromtimestamp(to_int(t)).astimezone()
    table = dict(_LAYOUT)
    out = []
    for piece in re.split(f"({_LAYOUT_RE.pattern})", layout):
        code = table.get(piece)
        if code is None:
            out.append(piece)
        elif code == ".%3":
            out.append(f".{t.microsecond // 1000:03d}")
        elif code == "%:z":
            z = t.strftime("%z")
            out.append("Z" if piece.startswith("Z") and z == "+0000" else f"{z[:3]}:{z[3:]}")
        else:
            out.append(t.strftime(code))
    return "".join(out)


_VERB = re.compile(r"%([-+# 0]*)(\d*)(?:\.(\d+))?([a-zA-Z%])")


def go_printf(fmt: str, *args: Any) -> str:
    """Go ``printf`` for the common verbs (%d %s %v %q %x %X %f %e %g %t %c %%)."""
    queue = list(args)

    def one(m: re.Match) -> str:
        flags, width, prec, verb = m.groups()
        if verb == "%":
            return "%"
        if not queue:
            return f"%!{verb}(MISSING)"
        v = queue.pop(0)
        spec = flags.replace("#", "") + width + (f".{prec}" if prec else "")
        if verb in "dxXoc":
            return format(to_int(v), spec + ("d" if verb == "d" else verb))
        if verb in "feEgG":
            return format(float(v), spec + verb)
        if verb == "q":
            return format('"' + go_print(v).replace("\\", "\\\\").replace('"', '\\"') + '"', spec)
        return format(go_print(v), spec)

    return _VERB.sub(one, fmt)


def _sprint(*args: Any) -> str:
    out = ""
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out += " "
        out += go_print(a)
    return out


def _cmp(op):
    return lambda a, b: op(a, b)


FUNCS: dict[str, Any] = {
    # ghz
    "newUUID": lambda: str(uuid.uuid4()), "randomString": random_string, "randomInt": random_int,
    # sprig: random and ids
    "uuidv4": lambda: str(uuid.uuid4()), "randAlphaNum": lambda n: _rand(_ALNUM, n),
    "randAlpha": lambda n: _rand(string.ascii_letters, n),
    "randNumeric": lambda n: _rand(string.digits, n),
    "randAscii": lambda n: _rand("".join(map(chr, range(32, 127))), n),
    "randInt": lambda lo, hi: random.randrange(to_int(lo), to_int(hi)),
    # sprig: time
    "now": lambda: dt.datetime.now().astimezone(), "date": go_date,
    "unixEpoch": lambda t: str(int(t.timestamp())),
    # sprig: math (int64)
    "add": lambda *a: sum(to_int(x) for x in a), "add1": lambda a: to_int(a) + 1,
    "sub": lambda a, b: to_int(a) - to_int(b), "div": lambda a, b: int(to_int(a) / to_int(b)),
    "mod": lambda a, b: to_int(a) % to_int(b),
    "mul": lambda a, *r: __import__("math").prod([to_int(a), *map(to_int, r)]),
    "max": lambda *a: max(map(to_int, a)), "min": lambda *a: min(map(to_int, a)),
    # sprig: strings
    "upper": lambda s: go_print(s).upper(), "lower": lambda s: go_print(s).lower(),
    "title": lambda s: go_print(s).title(), "trim": lambda s: go_print(s).strip(),
    "trimPrefix": lambda p, s: go_print(s).removeprefix(p),
    "trimSuffix": lambda p, s: go_print(s).removesuffix(p),
    "repeat": lambda n, s: go_print(s) * to_int(n),
    "replace": lambda old, new, s: go_print(s).replace(old, new),
    "trunc": lambda n, s: go_print(s)[: to_int(n)] if to_int(n) >= 0 else go_print(s)[to_int(n):],
    "substr": lambda a, b, s: go_print(s)[to_int(a): to_int(b)],
    "contains": lambda sub, s: sub in go_print(s),
    "hasPrefix": lambda p, s: go_print(s).startswith(p),
    "hasSuffix": lambda p, s: go_print(s).endswith(p),
    "quote": lambda *a: " ".join('"' + go_print(x).replace('"', '\\"') + '"' for x in a),
    "squote": lambda *a: " ".join(f"'{go_print(x)}'" for x in a),
    "cat": lambda *a: " ".join(go_print(x) for x in a if x is not None),
    "b64enc": lambda s: base64.b64encode(go_print(s).encode()).decode(),
    "b64dec": lambda s: base64.b64decode(go_print(s)).decode(errors="replace"),
    "toString": go_print, "atoi": to_int, "int": to_int, "int64": to_int,
    "float64": lambda v: float(v), "list": lambda *a: list(a),
    "join": lambda sep, items: sep.join(go_print(i) for i in items),
    "default": lambda d, *v: v[0] if v and v[0] not in (None, "", 0, False, [], {}) else d,
    # Go text/template builtins
    "print": _sprint, "println": lambda *a: " ".join(map(go_print, a)) + "\n",
    "printf": go_printf, "len": len, "not": lambda a: not a,
    "and": lambda *a: next((x for x in a if not x), a[-1]),
    "or": lambda *a: next((x for x in a if x), a[-1]),
    "eq": lambda a, *b: any(a == x for x in b), "ne": _cmp(lambda a, b: a != b),
    "lt": _cmp(lambda a, b: a < b), "le": _cmp(lambda a, b: a <= b),
    "gt": _cmp(lambda a, b: a > b), "ge": _cmp(lambda a, b: a >= b),
    "index": lambda c, *k: __import__("functools").reduce(lambda x, i: x[i], k, c),
    "html": lambda *a: html.escape(_sprint(*a)), "js": lambda *a: _sprint(*a).replace("'", "\\'"),
    "urlquery": lambda *a: urllib.parse.quote_plus(_sprint(*a)),
}

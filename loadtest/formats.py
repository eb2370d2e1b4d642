"""Report output formats: ghz's summary text, JSON, pretty JSON, CSV, and a
self-contained HTML page (inline CSS bars, no CDN).

    text = render(report, "summary")
"""

from __future__ import annotations

import html

from clawmesh.loadtest.report import go_json

FORMATS = ("summary", "json", "pretty", "csv", "html")


def format_nano(ns: int) -> str:
    """ghz ``formatNanoUnit``: ``<int> ns`` under 10 µs, else ``%4.2f ms`` / ``%4.2f s``."""
    if ns < 10_000:
        return f"{ns} ns"
    ms = ns / 1_000_000
    return f"{ms:4.2f} ms" if ms < 1000 else f"{ms / 1000:4.2f} s"


def _tabwriter(rows: list[list[str]], padding: int = 3) -> str:
    """Go tabwriter(minwidth 0, padding 3, ' ') over tab-terminated cells."""
    widths = [max(len(r[i]) for r in rows) + padding for i in range(len(rows[0]))]
    return "".join("".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + "\n"
                   for r in rows)


def _by_count(dist: dict[str, int]) -> list[tuple[str, int]]:
    # Go iterates a map in random order; any order is ghz-shaped. Most frequent first.
    return sorted(dist.items(), key=lambda kv: (-kv[1], kv[0]))


def histogram_text(buckets: list[dict] | None) -> str:
    if not buckets:
        return ""
    marks = [f"{b['mark'] * 1000:.3f}" for b in buckets]
    max_mark = f"{max(b['mark'] for b in buckets) * 1000:.3f}"
    max_count = max(b["count"] for b in buckets)
    mw, cw = len(max_mark), len(str(max_count))
    lines = []
    for b, mark in zip(buckets, marks, strict=True):
        bar = (b["count"] * 40 + max_count // 2) // max_count if max_count > 0 else 0
        count = str(b["count"])
        lines.append(f"  {mark}{' ' * (mw - len(mark))} [{count}]{' ' * (cw - len(count))} |"
                     + "∎" * bar + "\n")
    return "".join(lines)


def summary(rep: dict) -> str:
    """ghz's default text output (printer/template.go ``defaultTmpl``)."""
    out = ["\nSummary:\n"]
    if rep.get("name"):
        out.append(f"  Name:\t\t{rep['name']}\n")
    out.append(f"  Count:\t{rep['count']}\n")
    for label in ("Total", "Slowest", "Fastest", "Average"):
        out.append(f"  {label}:\t{format_nano(rep[label.lower()])}\n")
    out.append(f"  Requests/sec:\t{rep['rps']:4.2f}\n\nResponse time histogram:\n")
    out.append(histogram_text(rep["histogram"]))
    out.append("\nLatency distribution:")
    for d in rep["latencyDistribution"] or []:
        out.append(f"\n  {d['percentage']} % in {format_nano(d['latency'])} ")
    out.append("\n\n")
    if rep["statusCodeDistribution"]:
        out.append("Status code distribution:\n")
        out.append(_tabwriter([[f"  [{k}]", f"{n} responses"]
                               for k, n in _by_count(rep["statusCodeDistribution"])]))
    out.append("\n")
    if rep["errorDistribution"]:
        out.append("Error distribution:\n")
        out.append(_tabwriter([[f"  [{n}]", k] for k, n in _by_count(rep["errorDistribution"])]))
    out.append("\n")
    return "".join(out)


def csv(rep: dict) -> str:
    """ghz CSV: leading blank line, header, ``%4.2f`` ms rows, errors unescaped."""
    rows = "".join(f"\n{d['latency'] / 1_000_000:4.2f},{d['status']},{d['error']}"
                   for d in rep["details"] or [])
    return "\nduration (ms),status,error" + rows + "\n"


_CSS = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;
margin:1em 0}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}
.bar{background:#3273dc;height:1em;display:inline-block}.num{text-align:right}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}"""


def to_html(rep: dict) -> str:
    """One self-contained page: summary, histogram (CSS bars), percentiles, codes, errors."""
    e = html.escape
    opts = rep["options"]
    title = e(rep.get("name") or f"{opts.get('call', '')} @ {opts.get('host', '')}")
    rows = [("Date", rep["date"]), ("End reason", rep["endReason"]), ("Count", rep["count"]),
            ("Total", format_nano(rep["total"])), ("Slowest", format_nano(rep["slowest"])),
            ("Fastest", format_nano(rep["fastest"])), ("Average", format_nano(rep["average"])),
            ("Requests/sec", f"{rep['rps']:4.2f}")]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
             f"<style>{_CSS}</style></head><body><h1>{title}</h1><table>"]
    parts += [f"<tr><th>{k}</th><td>{e(str(v))}</td></tr>" for k, v in rows]
    parts.append("</table><h2>Response time histogram</h2><table>")
    buckets = rep["histogram"] or []
    top = max((b["count"] for b in buckets), default=0) or 1
    for b in buckets:
        width = 400 * b["count"] // top
        parts.append(f"<tr><td class='num'>{b['mark'] * 1000:.3f} ms</td>"
                     f"<td class='num'>{b['count']}</td><td><span class='bar' "
                     f"style='width:{width}px'></span> {b['frequency'] * 100:.1f}%</td></tr>")
    parts.append("</table><h2>Latency distribution</h2><table>")
    parts += [f"<tr><td>{d['percentage']} %</td><td>{format_nano(d['latency'])}</td></tr>"
              for d in rep["latencyDistribution"] or []]
    parts.append("</table><h2>Status code distribution</h2><table>")
    parts += [f"<tr><td>{e(k)}</td><td class='num'>{n}</td></tr>"
              for k, n in _by_count(rep["statusCodeDistribution"])]
    if rep["errorDistribution"]:
        parts.append("</table><h2>Error distribution</h2><table>")
        parts += [f"<tr><td class='num'>{n}</td><td>{e(k)}</td></tr>"
                  for k, n in _by_count(rep["errorDistribution"])]
    parts.append(f"</table><h2>Options</h2><pre>{e(go_json(opts, '  '))}</pre></body></html>\n")
    return "".join(parts)


def render(rep: dict, fmt: str) -> str:
    """The report in ghz format ``fmt`` (JSON has no trailing newline, as in ghz)."""
    if fmt == "json":
        return go_json(rep)
    if fmt == "pretty":
        return go_json(rep, "  ")
    if fmt == "csv":
        return csv(rep)
    if fmt == "html":
        return to_html(rep)
    if fmt == "summary":
        return summary(rep)
    raise ValueError(f"unsupported format {fmt!r}; one of {', '.join(FORMATS)}")

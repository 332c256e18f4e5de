"""The report's sections as Markdown or one self-contained HTML page (figures inlined)."""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path


def number(x, fmt: str) -> str:
    """A table cell: `x` formatted, "-" for a missing value (None, NaN)."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table; first column left-aligned, the others right-aligned."""
    align = [":---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"



def render_markdown(secs: list[tuple[str, object]]) -> str:
    parts = []
    for kind, c in secs:
        if kind == "banner":
            parts.append(f"> **{c}**")
        elif kind in ("h1", "h2"):
            parts.append(("# " if kind == "h1" else "## ") + str(c))
        elif kind == "p":
            parts.append(str(c))
        else:
            parts.append(markdown_table(*c))
    return "\n\n".join(parts) + "\n"


FIGURE_TITLES = {"f1_bars": "Per-AU F1 by method, the all-present baseline in grey",
                 "correlation": "AU correlations: labels beside each method's predictions",
                 "timeline": "One test video: probabilities against the labels",
                 "reliability": "Reliability diagram: fraction labelled present against mean probability"}
STYLE = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;"
         "color:#222;line-height:1.4}h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;"
         "border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:1em 0;font-size:.92em}"
         "td,th{border:1px solid #bbb;padding:3px 9px;text-align:right}th{background:#f2f2f2}"
         "td:first-child,th:first-child{text-align:left}"
         "figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #ddd}"
         "figcaption{color:#555;font-size:.9em}.note{color:#555}"
         ".banner{background:#b00000;color:#fff;font-weight:bold;padding:1em;font-size:1.1em}")


def _figure(path: Path) -> str:
    """A PNG inlined as a data URI: the page is one self-contained file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")  # a Path or a URL store's UPath
    title = next((t for k, t in FIGURE_TITLES.items() if path.stem.startswith(k)), path.stem)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
            f"<figcaption>{html.escape(title)} ({html.escape(path.name)})</figcaption></figure>")


def render_html(secs: list[tuple[str, object]], images: list[Path]) -> str:
    body = []
    for kind, c in secs:
        if kind == "banner":
            body.append(f'<div class="banner">{html.escape(str(c))}</div>')
        elif kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(str(c))}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(str(c))}</p>")
        else:
            body.append(html_table(*c))
    if images:
        body.append("<h2>Figures</h2>")
        body += [_figure(p) for p in images]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>AU report</title>"
            f"<meta name='viewport' content='width=device-width'><style>{STYLE}</style></head>"
            f"<body>\n" + "\n".join(body) + "\n</body></html>\n")



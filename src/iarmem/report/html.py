"""HTML building blocks of the report: escaping, tables, embedded figures and the page shell.

The page is one self-contained file: every image is a base64 data URI, the CSS and the one script
are inline, and a Content-Security-Policy forbids any network request, so the report opens the
same from a laptop disk, a phone or an e-mail attachment years later.
"""

from __future__ import annotations

import base64
import html
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

# Every image a figure can show; anything else is refused rather than embedded blindly.
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}

CSS = """
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:12px 14px 40px}
header{background:#1d2b3a;color:#fff;padding:18px 14px}
header .inner{max-width:1180px;margin:0 auto}
header h1{margin:0 0 4px;font-size:1.45em;overflow-wrap:anywhere}
header p{margin:2px 0;color:#c9d4df;font-size:.9em;overflow-wrap:anywhere}
nav{display:flex;flex-wrap:wrap;gap:6px;margin-top:10px}
nav a{color:#fff;background:#33475c;border-radius:4px;padding:2px 8px;text-decoration:none;font-size:.85em}
section{background:#fff;border:1px solid #dde2e8;border-radius:8px;margin:14px 0;padding:6px 16px 14px}
h2{font-size:1.2em;margin:12px 0 6px}
h3{font-size:1.02em;margin:14px 0 4px}
p,li{overflow-wrap:anywhere}
.note{color:#5b6672;font-size:.9em}
.sentence{border-left:4px solid #3b7dd8;background:#eef4fc;padding:6px 10px;margin:8px 0}
.warn{border-left:4px solid #c9821b;background:#fdf4e6;padding:6px 10px;margin:8px 0}
dl.answers{margin:4px 0 12px}dl.answers dt{font-weight:600;margin-top:6px}
dl.answers dd{margin:2px 0 0 16px;overflow-wrap:anywhere}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;margin:6px 0;font-size:.88em}
th,td{border-bottom:1px solid #e3e7ec;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.ref td{font-weight:600}
tr.front td:first-child::after{content:" \\2605";color:#c9821b}
code{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f3f4f6;border-radius:3px;
 padding:1px 3px;white-space:pre-wrap;overflow-wrap:anywhere}
td code{white-space:nowrap;overflow-wrap:normal}
td.wide{min-width:10em}
tr.detail td{border-bottom:2px solid #d5dbe2;padding:2px 8px 8px 20px;font-size:.95em}
tr.detail code{white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-all}
tr.has-detail td{border-bottom:none}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,320px),1fr));gap:12px;margin:8px 0}
figure{margin:0;min-width:0}
figure img{display:block;max-width:100%;height:auto;border:1px solid #e3e7ec;border-radius:4px;background:#fff}
figcaption{font-size:.85em;color:#3c4650;margin-top:4px;overflow-wrap:anywhere}
.badge{display:inline-block;border-radius:3px;padding:0 5px;font-size:.78em;font-weight:600}
.badge.bad{background:#f8d7d3;color:#8a1f11}
.badge.ok{background:#dbefdc;color:#1f5f25}
details{margin:6px 0}
summary{cursor:pointer;color:#2f5f9e}
@media (max-width:600px){
 main{padding:8px 6px 30px}section{padding:4px 10px 10px}body{font-size:14px}
 table.stack,table.stack tbody,table.stack tr,table.stack td{display:block;width:100%}
 table.stack thead{display:none}
 table.stack tr{border-bottom:2px solid #d5dbe2;padding:4px 0}
 table.stack tr.has-detail{border-bottom:none}
 table.stack td{border:none;padding:1px 4px;text-align:left;white-space:normal;min-width:0}
 table.stack td[data-label]::before{content:attr(data-label) ": ";font-weight:600;color:#5b6672}
 table.stack td code{white-space:pre-wrap;overflow-wrap:anywhere}
 tr.detail td{padding-left:4px}
}
"""

# Lets a headless browser check the page: every image decoded, nothing wider than the window.
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var d = document.body.dataset, w = document.documentElement.scrollWidth;
  d.imagesTotal = String(imgs.length);
  d.imagesLoaded = String(ok);
  d.scrollWidth = String(w);
  d.innerWidth = String(window.innerWidth);
  d.overflowX = w > window.innerWidth ? "yes" : "no";
  d.ready = "yes";
});
"""

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")


def esc(text: object) -> str:
    """Escape any value for HTML text or attributes."""
    return html.escape("" if text is None else str(text), quote=True)


def code(text: str) -> str:
    return f"<code>{esc(text)}</code>"


def badge(text: str, good: bool = False) -> str:
    return f'<span class="badge {"ok" if good else "bad"}">{esc(text)}</span>'


def note(text: str) -> str:
    """A short remark, e.g. why a section is skipped; ``text`` is already HTML."""
    return f'<p class="note">{text}</p>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, id_: str | None = None,
          numeric: Sequence[bool] | None = None, row_classes: Sequence[str] | None = None,
          details: Sequence[str] | None = None, wide: Sequence[int] = (), stack: bool = False) -> str:
    """A table inside a horizontally scrolling wrapper; cells are HTML (escape text before).

    ``details[i]``, when not empty, is a full-width row under row i (long text such as a command
    line reads better across the whole table than squeezed into one column). Columns in ``wide``
    hold prose and keep a readable width (the table scrolls instead). A ``stack`` table turns
    into one labelled card per row on a phone, for tables of prose rather than of numbers."""
    numeric = numeric or [False] * len(headers)
    classes = ["num" if numeric[j] else "wide" if j in wide else "" for j in range(len(headers))]
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f"<td{_attrs(classes[j], headers[j] if stack else '')}>{c}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
        if details and details[i]:
            body.append(f'<tr class="detail"><td colspan="{len(headers)}">{details[i]}</td></tr>')
    ident = (f' id="{esc(id_)}"' if id_ else "") + (' class="stack"' if stack else "")
    return (f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _attrs(cls: str, label: str) -> str:
    return (f' class="{cls}"' if cls else "") + (f' data-label="{esc(label)}"' if label else "")


def _mime(data: bytes) -> str | None:
    return next((m for sig, m in _SIGNATURES.items() if data.startswith(sig)), None)


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG header (lets the browser lay out before decoding)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def image(data: bytes, alt: str) -> str:
    """An <img> holding ``data`` as a data URI, or '' when the bytes are no PNG / JPEG."""
    mime = _mime(data)
    if mime is None:
        return ""
    size = png_size(data)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:{mime};base64,{b64}" alt="{esc(alt)}"{dims}>'


def read_image(path: Path) -> bytes | None:
    """The bytes of an image file, or None when it is missing, unreadable or not an image."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if _mime(data) else None


def figure(data: bytes | None, alt: str, caption: str) -> str:
    """A captioned figure; ``caption`` is HTML. A missing image leaves the caption and a note."""
    img = image(data, alt) if data else ""
    if not img:
        img = note(f"({esc(alt)}: figure missing)")
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def grid(items: Iterable[str]) -> str:
    items = [i for i in items if i]
    return f'<div class="grid">{"".join(items)}</div>' if items else ""


def section(id_: str, title: str, body: str) -> str:
    return f'<section id="{esc(id_)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle_lines: Sequence[str], nav: Sequence[tuple[str, str]], body: str) -> str:
    """The whole document; ``subtitle_lines`` are HTML, ``nav`` holds (section id, label)."""
    links = "".join(f'<a href="#{esc(i)}">{esc(label)}</a>' for i, label in nav)
    sub = "".join(f"<p>{line}</p>" for line in subtitle_lines)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="generator" content="iarmem report">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f'<body><header><div class="inner"><h1>{esc(title)}</h1>{sub}<nav>{links}</nav></div></header>\n'
        f"<main>{body}</main>\n<script>{SCRIPT}</script></body></html>\n"
    )

"""The report's HTML: the stylesheet, escaped tables, and ``write_page``, THE page writer (evaluation of
every task, the audit, the study, lung evaluation): one self-contained ``index.html`` under the disclaimer
with PNG figures beside it. Every string from the data is HTML-escaped; every file is written to a
temporary name and renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from .. import DISCLAIMER
from ..files import atomic_write
from .figures import plot_errors, save_png

CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d1d1f;
       margin: 0 auto; max-width: 1180px; padding: 0 24px 48px; }
h1 { font-size: 1.55em; margin: 0.5em 0 0.3em; }
h2 { font-size: 1.2em; margin: 1.6em 0 0.5em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1.02em; margin: 1.2em 0 0.4em; }
.disclaimer { background: #fff3cd; border: 1px solid #e0b100; border-left: 6px solid #c98a00; padding: 8px 14px;
              margin: 16px 0 0; font-weight: 600; }
table { border-collapse: collapse; margin: 0.3em 0; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #bbb; background: #f6f6f6; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.context { font-size: 0.88em; color: #444; }
table.context th { font-weight: 600; padding-left: 0; }
table.context td { overflow-wrap: anywhere; max-width: 520px; }
.top { display: flex; flex-wrap: wrap; gap: 0 56px; align-items: flex-start; }
.top > section { flex: 0 1 auto; min-width: 0; }
.note { color: #555; font-size: 0.9em; margin: 0.3em 0; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; flex: 1 1 420px; max-width: 560px; }
figure.wide { max-width: none; }
figure.wide img { width: auto; max-width: 100%; }
figure img { width: 100%; height: auto; border: 1px solid #e4e4e4; }
figcaption { font-size: 0.88em; color: #555; }
details { margin: 0.4em 0; }
summary { cursor: pointer; font-weight: 600; }
footer { margin-top: 3em; font-size: 0.82em; color: #777; }
"""


def escape(s) -> str:
    """``s`` as text for HTML, quotes included."""
    return html.escape(str(s), quote=True)


def escaped_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], id: str | None = None, numeric_from: int = 1
) -> str:
    """Cells arrive escaped; columns from ``numeric_from`` on are right-aligned numbers."""
    attrs = f' id="{id}"' if id else ""
    th = "".join(f'<th{" class=num" if i >= numeric_from else ""} scope="col">{h}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(
            f'<th scope="row">{c}</th>' if i == 0 else f"<td{' class=num' if i >= numeric_from else ''}>{c}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>\n"
        for r in rows
    )
    return f"<table{attrs}>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], id: str | None = None) -> str:
    """A table as every page here writes one, for pages written elsewhere (``covidnet lungs eval``): the
    cells are escaped here; the first column heads its row, the others are right-aligned numbers."""
    return escaped_table([escape(h) for h in header], [[escape(c) for c in r] for r in rows], id=id)


def _context_html(context: dict | None) -> str:
    rows = "".join(f'<tr><th scope="row">{escape(k)}</th><td>{escape(v)}</td></tr>' for k, v in (context or {}).items())
    return f'<section><h2>Run</h2>\n<table id="context" class="context">{rows}</table></section>'


def _figures_html(figures: Sequence[tuple[str, object, str, str | None]]) -> str:
    figs = ""
    for name, _, caption, fid in figures:
        ident = f' id="{escape(fid)}"' if fid else ""
        figs += f'<figure><img{ident} src="{escape(name)}" alt="{escape(caption)}">'
        figs += f"<figcaption>{escape(caption)}</figcaption></figure>\n"
    return f'<section>\n<h2>Figures</h2>\n<div class="figures">\n{figs}</div>\n</section>'


def write_page(
    out_dir: str | Path,
    title: str,
    summary_html: str,
    figures: Sequence[tuple[str, object, str, str | None]] = (),
    context: dict | None = None,
    before: Sequence[str] = (),
    after: Sequence[str] = (),
    errors: Sequence[dict] | None = None,
) -> Path:
    """THE report writer (evaluation of every task, the audit): ``out_dir/index.html`` under the
    disclaimer, with a summary, the run's context, ``figures`` (``(file name, matplotlib Figure or PNG
    bytes, caption, element id)``), HTML sections ``before`` and ``after`` the figures and, when given,
    images with heat maps (``errors``, as ``plot_errors`` takes them; written as ``errors.png``).
    Figures first, page last, each atomically, so a page never points at a figure that is not there
    yet; an earlier report's ``errors.png`` that this page no longer shows is removed."""
    from .. import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig, _, _ in figures:
        if isinstance(fig, bytes):
            atomic_write(out / name, fig)
        else:
            save_png(fig, out / name)
    if errors:
        save_png(plot_errors(errors), out / "errors.png")
    else:
        (out / "errors.png").unlink(missing_ok=True)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<p class="disclaimer" id="disclaimer" role="note">{DISCLAIMER}</p>
<h1>{escape(title)}</h1>
<div class="top">
<section>
<h2>Summary</h2>
{summary_html}
</section>
{_context_html(context) if context else ""}
</div>
{"".join(before)}
{_figures_html(figures) if figures else ""}
{"".join(after)}
<footer>{DISCLAIMER} Written by covidnet {escape(__version__)}.</footer>
</body>
</html>
"""
    index = out / "index.html"
    atomic_write(index, page.encode("utf-8"))
    return index

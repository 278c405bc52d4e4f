"""The stages' Markdown (headings, pipe tables, lists, emphasis, code, images) as HTML, and the
report as one self-contained page: no script, no font or file from a network, images by relative
path (the folder can be copied or zipped and still shows them)."""

from __future__ import annotations

import html
from dataclasses import dataclass

_STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 1em;line-height:1.4}"
    "table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}"
    "pre{background:#f6f6f6;padding:.5em;overflow-x:auto}"
    "img{max-width:100%;height:auto}"
    "nav{margin:.5em 0 1em;font-size:.95em}nav a{margin-right:1em}"
    "details>summary{cursor:pointer}details>summary h2{display:inline}"
    ".example{border:1px solid #ddd;border-radius:4px;padding:.3em .8em;margin:.8em 0}"
    ".example h3{margin:.3em 0}.example small{color:#777;font-weight:normal}"
    ".turn{margin:.2em 0;padding:.2em .5em;border-left:3px solid #2b6cb0}"
    ".turn.masked{border-left-color:#bbb;color:#777;background:#f6f6f6}"
    ".tag{font-size:.8em;background:#eee;border-radius:3px;padding:0 .3em;margin-left:.4em}"
    ".hit{color:#276749;font-weight:bold}.miss{color:#9b2c2c}.score{color:#555}"
)


def _renderer():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "breaks": True}).enable("table")


def markdown_to_html(text: str, title: str = "report") -> str:
    """CommonMark with GitHub tables; raw HTML in the text is escaped, never interpreted."""
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>\n{_renderer().render(text)}</body></html>\n"
    )


@dataclass
class Section:
    """One section of the report: Markdown for ``summary.md``, and for the page the same
    rendered, or HTML of its own (built from escaped text)."""

    id: str
    """The anchor of the section in the page."""
    title: str
    """Its heading."""
    markdown: list[str]
    """Its body, as Markdown lines."""
    html: str | None = None
    """HTML that replaces the rendered Markdown in the page."""
    collapsed: bool = False
    """Shown folded in the page (a native ``<details>``, no script)."""


def report_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}"]
    for section in sections:
        lines += ["", f"## {section.title}", "", *section.markdown]
    return "\n".join(lines) + "\n"


def report_html(title: str, sections: list[Section]) -> str:
    """The page: a title, links to each section, the sections in order."""
    renderer = _renderer()
    e = html.escape
    nav = " ".join(f"<a href='#{e(s.id)}'>{e(s.title)}</a>" for s in sections)
    parts = []
    for s in sections:
        body = s.html if s.html is not None else renderer.render("\n".join(s.markdown))
        if s.collapsed:
            parts.append(
                f"<section id='{e(s.id)}'><details><summary><h2>{e(s.title)}</h2></summary>\n"
                f"{body}</details></section>"
            )
        else:
            parts.append(f"<section id='{e(s.id)}'><h2>{e(s.title)}</h2>\n{body}</section>")
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{e(title)}</h1>\n<nav>{nav}</nav>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def markdown_body(text: str) -> str:
    """Markdown rendered as an HTML fragment (raw HTML in it escaped)."""
    return _renderer().render(text)

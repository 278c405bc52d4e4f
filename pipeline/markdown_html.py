"""The small Markdown subset the stages write (headings, pipe tables, paragraphs, lists, bold,
italics, code) as one self-contained HTML page, for `snakemake --report`, which embeds HTML
but shows Markdown files only as downloads."""

from __future__ import annotations

import html
import re

_INLINE = [
    (re.compile(r"\*\*(.+?)\*\*"), r"<b>\1</b>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<i>\1</i>"),
    (re.compile(r"`(.+?)`"), r"<code>\1</code>"),
]
_BULLET = re.compile(r"\s*[-*]\s+")
_STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:1em auto}"
    "table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
)


def _inline(text: str) -> str:
    out = html.escape(text.strip().rstrip("\\").rstrip(), quote=False)
    for pattern, replacement in _INLINE:
        out = pattern.sub(replacement, out)
    return out


def _cells(row: str) -> list[str]:
    return [_inline(cell) for cell in row.strip().strip("|").split("|")]


def _is_separator(row: str) -> bool:
    return bool(re.fullmatch(r"\|?(\s*:?-{3,}:?\s*\|)*\s*:?-{3,}:?\s*\|?", row.strip()))


def markdown_to_html(text: str, title: str = "report") -> str:
    body: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif heading := re.match(r"(#{1,6})\s+(.*)", line):
            level = len(heading[1])
            body.append(f"<h{level}>{_inline(heading[2])}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(lines[i])
                i += 1
            head = _is_separator(rows[1]) if len(rows) > 1 else False
            table = ["<table>"]
            for n, row in enumerate(rows):
                if head and n == 1:
                    continue
                tag = "th" if head and n == 0 else "td"
                table.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in _cells(row)) + "</tr>")
            body.append("\n".join(table + ["</table>"]))
        elif _BULLET.match(line):
            items = []
            while i < len(lines) and _BULLET.match(lines[i]):
                items.append(f"<li>{_inline(_BULLET.sub('', lines[i], count=1))}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"#|\||\s*[-*]\s", lines[i]):
                para.append(_inline(lines[i]))
                i += 1
            if not para:  # a line no branch above takes: keep it as its own paragraph
                para.append(_inline(lines[i]))
                i += 1
            body.append("<p>" + "<br>\n".join(para) + "</p>")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )

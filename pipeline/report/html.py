"""The stages' Markdown (headings, pipe tables, lists, emphasis, code) as one self-contained HTML
page, for `snakemake --report`, which embeds HTML but shows Markdown files only as downloads."""

from __future__ import annotations

import html

_STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:1em auto}"
    "table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
    "pre{background:#f6f6f6;padding:.5em}"
)


def markdown_to_html(text: str, title: str = "report") -> str:
    """CommonMark with GitHub tables; raw HTML in the text is escaped, never interpreted."""
    from markdown_it import MarkdownIt

    renderer = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable("table")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>\n{renderer.render(text)}</body></html>\n"
    )

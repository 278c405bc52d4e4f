"""The Markdown the stages write, as HTML for `snakemake --report`."""

from __future__ import annotations

from pipeline.markdown_html import markdown_to_html

TEXT = """# Decoder report

Grounding gap: **+0.5** nats/token for `true` vs *shuffled*;
second line <b>not a tag</b>

| metric | true | shuffled |
|---|---:|---|
| answer_loglik | -1.8 | -2.3 |
| a | b |c|

- first item
- second **item**

## Next
"""


def test_headings_tables_lists_and_inline_markup():
    out = markdown_to_html(TEXT, title="t")
    assert "<h1>Decoder report</h1>" in out and "<h2>Next</h2>" in out
    assert "<tr><th>metric</th><th>true</th><th>shuffled</th></tr>" in out
    assert "<tr><td>answer_loglik</td><td>-1.8</td><td>-2.3</td></tr>" in out
    assert "<tr><td>a</td><td>b</td><td>c</td></tr>" in out
    assert "---" not in out  # the separator row is not a row
    assert "<ul><li>first item</li><li>second <b>item</b></li></ul>" in out
    assert "<b>+0.5</b>" in out and "<code>true</code>" in out and "<i>shuffled</i>" in out
    # Text is escaped: a tag in the Markdown is shown, not interpreted.
    assert "&lt;b&gt;not a tag&lt;/b&gt;" in out
    assert out.count("<p>") == 1 and "<br>" in out


def test_a_table_without_separator_has_no_header():
    out = markdown_to_html("| a | b |\n| c | d |\n")
    assert "<th>" not in out and out.count("<tr>") == 2

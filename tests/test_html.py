"""The Markdown the stages write, as HTML for `snakemake --report` (markdown-it-py)."""

from __future__ import annotations

import re

from pipeline.report.html import markdown_to_html

TEXT = """# Decoder report

Grounding gap: **+0.5** nats/token for `true` vs *shuffled*;
second line <b>not a tag</b>

| metric | true | shuffled |
|---|---:|---|
| answer_loglik | -1.8 | -2.3 |
| a | b |c|

- first item
- second **item**

```
python -m pipeline.read --experiment decoder_smollm2
```

## Next
"""


def _flat(html: str) -> str:
    return re.sub(r">\s+<", "><", re.sub(r' style="[^"]*"', "", html))


def test_headings_tables_lists_code_and_inline_markup():
    out = _flat(markdown_to_html(TEXT, title="t"))
    assert "<title>t</title>" in out
    assert "<h1>Decoder report</h1>" in out and "<h2>Next</h2>" in out
    assert "<tr><th>metric</th><th>true</th><th>shuffled</th></tr>" in out
    assert "<tr><td>answer_loglik</td><td>-1.8</td><td>-2.3</td></tr>" in out
    assert "<tr><td>a</td><td>b</td><td>c</td></tr>" in out
    assert "---" not in out  # the separator row is not a row
    assert "<ul><li>first item</li><li>second <strong>item</strong></li></ul>" in out
    assert "<strong>+0.5</strong>" in out and "<code>true</code>" in out
    assert "<em>shuffled</em>" in out
    assert "<pre><code>python -m pipeline.read --experiment decoder_smollm2\n</code></pre>" in out
    # Text is escaped: a tag in the Markdown is shown, not interpreted.
    assert "&lt;b&gt;not a tag&lt;/b&gt;" in out
    assert "<br />" in out  # a line break inside a paragraph is kept


def test_a_right_aligned_column_keeps_its_alignment():
    out = markdown_to_html("| a | b |\n|---|--:|\n| 1 | 2 |\n")
    assert '<td style="text-align:right">2</td>' in out

"""Cards to safe HTML, numbers to text, and the chart geometry: pure functions, no server."""

from __future__ import annotations

import pytest

from registry.server.web.render import (
    CardLinks,
    human_size,
    loss_chart,
    render_card,
    resolve_url,
    weights_chart,
)
from tests.support.html import HtmlTags

LINKS = CardLinks("alice/m", "main", frozenset({"loss_curve.png", "docs/a b.md"}))


@pytest.mark.parametrize("markdown", [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
    '<a href=" javascript:alert(1)">x</a>',
    '<a href="jav&#x09;ascript:alert(1)">x</a>',
    '<a href="data:text/html,<script>alert(1)</script>">x</a>',
    "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
    "<svg><script>alert(1)</script></svg>",
    "<svg onload=alert(1)>",
    "<!-- x --><script>alert(1)</script>",
    '<iframe src="https://evil.example"></iframe>',
    '<p style="background:url(javascript:alert(1))">x</p>',
    '<img src="https://evil.example/track.png" alt="t">',
    '<img src="//evil.example/track.png" alt="t">',
    '<a href="//evil.example">x</a>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
])
def test_payloads_lose_everything_that_runs_or_loads(markdown):
    html = render_card(markdown, LINKS)
    tags = HtmlTags()
    tags.feed(html)
    assert not tags.names & {"script", "svg", "iframe", "style", "math", "object"}, html
    for name, value in tags.attributes:
        assert not name.startswith("on") and name != "style", html
        if name in ("href", "src"):
            assert value.startswith(("/alice/m/", "https://example.org", "#")), html
    assert "<!--" not in html


def test_relative_links_and_images_point_at_the_repo_files():
    html = render_card("![curve](loss_curve.png) ![gone](missing.png) [doc](<./docs/a b.md>) "
                       "[up](../x) [top](#usage) [ext](https://example.org/p?q=1)", LINKS)
    assert f'<img src="{resolve_url("alice/m", "main", "loss_curve.png")}" alt="curve">' in html
    assert "missing.png" not in html and "gone" not in html
    assert 'href="/alice/m/resolve/main/docs/a%20b.md"' in html
    assert 'href="#usage"' in html and 'href="https://example.org/p?q=1"' in html
    assert "../x" not in html


def test_card_headings_sit_under_the_page_headings():
    html = render_card("# Title\n\n## Part\n\n###### Deep", LINKS)
    assert "<h3>Title</h3>" in html and "<h4>Part</h4>" in html and "<h6>Deep</h6>" in html


def test_tables_and_code_blocks_survive():
    html = render_card("| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nx = 1\n```", LINKS)
    assert "<table>" in html and "<td>1</td>" in html
    assert '<code class="language-python">x = 1' in html


def test_sizes_read_like_the_hub():
    assert [human_size(n) for n in (None, 0, 999, 1000, 10_300, 2_500_000)] == [
        "-", "0 B", "999 B", "1.0 kB", "10.3 kB", "2.5 MB"]


def test_charts_need_numbers():
    assert loss_chart([]) is None and loss_chart([1.0]) is None
    assert loss_chart([1.0, float("nan")]) is None
    chart = loss_chart([2.0, 1.0, 1.5], baseline=3.0)
    assert chart is not None and len(chart.points.split()) == 3
    assert chart.y_max == 3.0 and chart.baseline_y is not None
    assert weights_chart([("a", float("inf"))]) is None
    bars = weights_chart([("a/x", 0.5), ("a/y", -0.25)])
    assert bars is not None
    positive, negative = bars.bars
    assert negative.x + negative.width == pytest.approx(bars.zero_x)  # grows left of zero
    assert positive.x == pytest.approx(bars.zero_x)
    assert positive.width == pytest.approx(2 * negative.width)


def test_peft_flags_show_those_set_in_words():
    from types import SimpleNamespace

    from registry.server.web.pages import _peft_flags

    module = SimpleNamespace(use_dora=True, use_rslora=False, peft_version="0.17.0",
                             rank_pattern=(("q_proj", 16), ("v_proj", 4)),
                             layers_to_transform=(0, 2), modules_to_save=())
    assert _peft_flags(module) == [("use_dora", "yes"), ("peft_version", "0.17.0"),
                                   ("rank_pattern", "q_proj: 16, v_proj: 4"),
                                   ("layers_to_transform", "0, 2")]
    assert _peft_flags(SimpleNamespace()) == []  # a registry from before the flags

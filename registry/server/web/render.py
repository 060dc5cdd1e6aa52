"""Turning untrusted content into safe HTML: model cards, numbers and the two SVG charts.

Cards are anyone's content. They are rendered by markdown-it-py (CommonMark, tables) and the
HTML it produces is cleaned by nh3 with an allow-list: no script, no event handler, no style,
links only to http(s)/mailto or inside the server, images only from the server itself (the
Content-Security-Policy allows nothing else, and a blocked image would only be noise).
Relative links and images in a card point at the repo's own files, as on the Hub. Every other
value reaches a page through Jinja2 autoescaping; the charts are built here from numbers only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import nh3
from markdown_it import MarkdownIt

_MARKDOWN = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable(
    ["table", "strikethrough"]
)
_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt",
    "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "ol", "p",
    "pre", "s", "samp", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "ul",
}
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"align", "colspan", "rowspan"},
    "th": {"align", "colspan", "rowspan", "scope"},
    "ol": {"start"},
    "code": {"class"},
}
_LINK_SCHEMES = {"http", "https", "mailto"}
_HEADING = re.compile(r"<(/?)h([1-6])>")  # nh3 leaves headings without attributes
_IMAGE_WITHOUT_SOURCE = re.compile(r"<img(?![^>]*\ssrc=)[^>]*>")


@dataclass(frozen=True)
class CardLinks:
    """Where a card's relative links and images point: the repo's files at one revision."""

    repo_id: str
    revision: str
    files: frozenset[str] = frozenset()  # an image is shown only when it is one of these

    def file_url(self, path: str) -> str:
        """The download URL of a repo file (the API's own resolve URL)."""
        return resolve_url(self.repo_id, self.revision, path)


def resolve_url(repo_id: str, revision: str, path: str) -> str:
    """``/{repo}/resolve/{revision}/{path}``, each part percent-encoded as the client does."""
    return f"/{quote(repo_id)}/resolve/{quote(revision, safe='')}/{quote(path)}"


def render_card(markdown: str, links: CardLinks) -> str:
    """A card body as sanitised HTML (safe to insert into a page unescaped)."""
    html = _MARKDOWN.render(markdown)

    def keep(tag: str, attribute: str, value: str) -> str | None:
        if attribute == "src":
            return _image_source(value, links)
        if attribute == "href":
            return _link_target(value, links)
        if attribute == "class":
            # Only markdown-it's own "language-xyz" on code blocks.
            return value if value.startswith("language-") and value.isascii() else None
        return value

    clean = nh3.clean(
        html,
        tags=_TAGS,
        clean_content_tags={"script", "style"},
        attributes=_ATTRIBUTES,
        attribute_filter=keep,
        strip_comments=True,
        link_rel="noopener noreferrer nofollow",
        url_schemes=_LINK_SCHEMES,
    )
    # The card sits under the page's "Model card" heading (h2): its h1 becomes an h3, so the
    # page keeps one h1 and an outline that screen readers can follow.
    clean = _HEADING.sub(lambda m: f"<{m[1]}h{min(6, int(m[2]) + 2)}>", clean)
    # An image whose source was refused would show as a broken image: leave it out.
    return _IMAGE_WITHOUT_SOURCE.sub("", clean)


def _is_relative(value: str) -> bool:
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc and not value.startswith(("/", "\\"))


def _image_source(value: str, links: CardLinks) -> str | None:
    """Only the repo's own files (the CSP allows images from this server alone; a missing
    file would be a broken image)."""
    value = value.strip()
    if not value or not _is_relative(value):
        return None
    path = _repo_path(value)
    return links.file_url(path) if path in links.files else None


def _link_target(value: str, links: CardLinks) -> str | None:
    value = value.strip()
    if not value:
        return None
    if value.startswith("#"):
        return value
    parts = urlsplit(value)
    if parts.scheme:
        return value if parts.scheme.lower() in _LINK_SCHEMES else None
    if parts.netloc or value.startswith(("/", "\\")):
        return None if value.startswith(("//", "\\")) else value
    path = _repo_path(value)
    return links.file_url(path) if path and ".." not in path.split("/") else None


def _repo_path(value: str) -> str:
    """The repo file a relative URL names (markdown-it has already percent-encoded it)."""
    path = unquote(urlsplit(value).path)
    while path.startswith("./"):
        path = path[2:]
    return path


# ---------------------------------------------------------------------------- numbers


def human_size(size: int | None) -> str:
    """1234567 -> '1.2 MB' (decimal units, as the Hub shows them)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def human_count(value: int | None) -> str:
    """12345 -> '12,345'."""
    return "-" if value is None else f"{value:,}"


# ---------------------------------------------------------------------------- charts


@dataclass(frozen=True)
class LineChart:
    """A loss curve as SVG geometry: the polyline, its axes' end labels and the baseline."""

    width: int
    height: int
    points: str
    x_max: int
    y_min: float
    y_max: float
    baseline_y: float | None  # where the zero-weights loss sits, if given and in range
    label: str


@dataclass(frozen=True)
class Bar:
    """One parent's weight as a horizontal bar (negative weights grow left of zero)."""

    name: str
    weight: float
    x: float
    width: float
    y: float


@dataclass(frozen=True)
class BarChart:
    """A composed module's weights, one bar per parent."""

    width: int
    height: int
    zero_x: float
    bars: tuple[Bar, ...]
    label: str


_PLOT_LEFT, _PLOT_RIGHT, _PLOT_TOP, _PLOT_BOTTOM = 56, 12, 12, 28


def loss_chart(
    values: Sequence[float], baseline: float | None = None, *, width: int = 560, height: int = 220
) -> LineChart | None:
    """The geometry of a loss curve (None without at least two finite numbers)."""
    ys = [float(v) for v in values if _finite(v)]
    if len(ys) < 2:
        return None
    low, high = min(ys), max(ys)
    if baseline is not None and _finite(baseline):
        low, high = min(low, float(baseline)), max(high, float(baseline))
    span = (high - low) or 1.0
    plot_w = width - _PLOT_LEFT - _PLOT_RIGHT
    plot_h = height - _PLOT_TOP - _PLOT_BOTTOM

    def y_of(value: float) -> float:
        return _PLOT_TOP + plot_h * (high - value) / span

    step = plot_w / (len(ys) - 1)
    points = " ".join(f"{_PLOT_LEFT + i * step:.1f},{y_of(v):.1f}" for i, v in enumerate(ys))
    base_y = y_of(float(baseline)) if baseline is not None and _finite(baseline) else None
    label = (f"Loss over {len(ys)} evaluations, from {ys[0]:.4f} to {ys[-1]:.4f} "
             f"(lowest {min(ys):.4f})")
    if base_y is not None:
        label += f"; base model without the module {float(baseline):.4f}"  # type: ignore[arg-type]
    return LineChart(width, height, points, len(ys), low, high, base_y, label)


def weights_chart(
    weights: Sequence[tuple[str, float]], *, width: int = 560, bar_height: int = 22
) -> BarChart | None:
    """The geometry of a weights chart (None when no weight is a finite number)."""
    items = [(name, float(w)) for name, w in weights if _finite(w)]
    if not items:
        return None
    label_w, pad = 220, 8
    plot_w = width - label_w - 2 * pad
    low = min(0.0, *(w for _, w in items))
    high = max(0.0, *(w for _, w in items))
    span = (high - low) or 1.0
    zero_x = label_w + pad + plot_w * (0 - low) / span
    bars = []
    for i, (name, w) in enumerate(items):
        x_end = label_w + pad + plot_w * (w - low) / span
        bars.append(Bar(name, w, min(zero_x, x_end), abs(x_end - zero_x), i * bar_height))
    label = "Weights of the parents: " + ", ".join(f"{n} {w:+.3f}" for n, w in items)
    return BarChart(width, bar_height * len(items) + 4, zero_x, tuple(bars), label)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

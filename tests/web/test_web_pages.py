"""The web pages over HTTP, without a browser: content, filters, errors, escaping, sign-in.

Run on SQLite and on PostgreSQL against a real ``loradex serve`` (``conftest.py``).
"""

from __future__ import annotations

import hashlib
import html
import re

import httpx
import pytest

from registry.server.web.pages import CONTENT_SECURITY_POLICY
from tests.support.html import HtmlTags

pytestmark = pytest.mark.timeout(300)


def get(hub, path: str, client: httpx.Client | None = None) -> httpx.Response:
    """GET a page (anonymous unless a signed-in client is given)."""
    if client is not None:
        return client.get(path)
    return httpx.get(hub.url + path)


def result_ids(page: str) -> list[str]:
    """The repo ids a results list shows, in order."""
    return re.findall(r'<li class="result">\s*<h3><a href="/[^"]+">([^<]+)</a>', page)


def signed_in(hub, token: str) -> httpx.Client:
    """A client that signed in through the form, as a browser does."""
    client = httpx.Client(base_url=hub.url)
    form = client.get("/sign-in")
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form.text)
    assert csrf is not None
    answer = client.post("/sign-in", data={"csrf_token": csrf.group(1), "token": token,
                                           "next": "/models"})
    assert answer.status_code == 303, answer.text
    return client


def test_search_filters_sort_and_pages(web_hub):
    first = get(web_hub, "/models?tag=filler&per_page=3")
    assert first.status_code == 200
    assert result_ids(first.text) == ["bob/filler-00", "bob/filler-01", "bob/filler-02"]
    assert "Modules 1–3 of 7" in first.text  # the private filler is not counted
    seen = result_ids(first.text)
    url = re.search(r'rel="next" href="([^"]+)"', first.text)
    while url:
        page = get(web_hub, html.unescape(url.group(1)))
        assert "tag=filler" in page.url.query.decode() and "per_page=3" in str(page.url)
        seen += result_ids(page.text)
        url = re.search(r'rel="next" href="([^"]+)"', page.text)
    assert seen == list(web_hub.fillers)
    assert result_ids(get(web_hub, "/models?kind=hydra").text) == [web_hub.hydra]
    assert set(result_ids(get(web_hub, "/models?license=apache-2.0").text)) == {
        web_hub.composed, *web_hub.parents}
    assert result_ids(get(web_hub, "/models?task=past_tense").text) == ["alice/past-tense"]
    assert set(result_ids(get(web_hub, "/models?author=alice&rank=8").text)) == {
        web_hub.composed, *web_hub.parents}
    assert result_ids(get(web_hub, "/models?rank=16").text) == []  # only the private one
    by_rank = result_ids(get(web_hub, "/models?sort=rank&per_page=100").text)
    assert by_rank.index(web_hub.hydra) < by_rank.index(web_hub.composed)
    text = get(web_hub, "/models?q=plural").text
    assert result_ids(text)[0] == "alice/plural"
    assert 'value="plural"' in text  # the form shows the query it answers


@pytest.mark.parametrize("query, message", [
    ("rank=abc", "rank must be a whole number"),
    ("rank=-1", "rank must be a whole number"),
    ("page=0", "page must be a whole number"),
    ("per_page=1000", "per_page must be a whole number"),
    ("sort=cheapest", "sort must be one of"),
    ("kind=adapter", "kind must be one of"),
    ("q=" + "x" * 300, "q is longer than 256 characters"),
    ("tag=" + "&tag=".join(str(i) for i in range(40)), "at most 32 tags"),
])
def test_a_bad_query_parameter_is_a_400_page_saying_which(web_hub, query, message):
    answer = get(web_hub, f"/models?{query}")
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/html")
    assert message in html.unescape(answer.text)


@pytest.mark.parametrize("path", [
    "/nobody/nothing", "/alice/does-not-exist", "/alice/past-tense/tree/" + "0" * 40,
    "/alice/past-tense/tree/no-such-branch", "/bad..name/x", "/nobody", "/static/nothing.css",
    "/static/..%2Fpages.py", "/alice/past-tense/blob/main/README.md",
])
def test_unknown_pages_are_404_pages(web_hub, path):
    answer = get(web_hub, path)
    assert answer.status_code == 404
    assert "Traceback" not in answer.text


def test_every_page_has_the_strict_security_headers(web_hub):
    for path in ("/", "/models?rank=x", "/nobody/nothing", f"/{web_hub.composed}", "/alice",
                 "/base-models/" + web_hub.parents[0], "/sign-in", "/static/web.css"):
        answer = get(web_hub, path)
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY


def test_module_page_files_download_through_the_api_resolve_urls(web_hub):
    page = get(web_hub, f"/{web_hub.composed}").text
    rows = re.findall(r'<a href="(/alice/composed-tense/resolve/main/([^"]+))" download>'
                      r'.*?<code class="sha" title="([0-9a-f]{64})"', page, re.S)
    assert {path for _, path, _ in rows} >= {"adapter_config.json", "adapter_model.safetensors",
                                            "README.md"}
    info = web_hub.server.api().model_info(web_hub.composed, files_metadata=True)
    api_sizes = {s.rfilename: s.size for s in info.siblings}
    for url, path, sha in rows:
        body = get(web_hub, url).content
        assert hashlib.sha256(body).hexdigest() == sha, path
        assert len(body) == api_sizes[path]
    assert "10.3 kB" in page or "kB" in page  # sizes are shown in readable units


def test_module_page_shows_metadata_family_and_charts(web_hub):
    page = html.unescape(get(web_hub, f"/{web_hub.composed}").text)
    for fact in ("HuggingFaceTB/SmolLM2-135M-Instruct", "Rank</dt><dd>8", "Alpha</dt><dd>16.0",
                 "q_proj, v_proj", "apache-2.0", "LORA / CAUSAL_LM"):
        assert fact in page, fact
    parents = re.findall(r'<td><a href="/(alice/[a-z-]+)/tree/[0-9a-f]{40}">', page)
    assert parents == list(web_hub.parents)
    assert "+0.7200" in page and "-0.1800" in page
    loss = re.search(r'<polyline points="([^"]+)"', page)
    assert loss is not None and len(loss.group(1).split()) == 10
    assert "Loss over 10 evaluations, from 2.3100 to 1.3600" in page
    assert page.count("<rect ") == 2  # one bar per parent
    assert "<dt>method</dt><dd>lorahub</dd>" in page and "<dt>budget</dt><dd>10</dd>" in page
    assert "<img" not in page  # the card's loss_curve.png is not in the repo: no broken image
    assert f"loradex pull {web_hub.composed} --endpoint {web_hub.url}" in page
    assert f'PeftModel.from_pretrained(base, "{web_hub.composed}")' in page
    assert f"--candidates {web_hub.composed}" in page
    parent = html.unescape(get(web_hub, f"/{web_hub.parents[0]}").text)
    children = re.search(r'<ul class="children">(.*?)</ul>', parent, re.S)
    assert children is not None and web_hub.composed in children.group(1)
    assert "weight +0.7200" in children.group(1)
    compatible = re.search(r'<ul class="compatible">(.*?)</ul>', parent, re.S)
    assert compatible is not None and "alice/plural</a> <span class=\"meta\">rank 8 (same rank)" \
        in compatible.group(1)
    assert web_hub.hydra not in compatible.group(1)  # a Hydra module is not a LoRA's partner


def test_history_has_a_page_per_revision(web_hub):
    page = get(web_hub, f"/{web_hub.parents[0]}").text
    shas = re.findall(r'<a href="/alice/past-tense/tree/([0-9a-f]{40})"', page)
    assert len(shas) == 3  # upload of the folder, the notes, and the repo's initial commit
    old = get(web_hub, f"/{web_hub.parents[0]}/tree/{shas[1]}")
    assert old.status_code == 200
    assert "NOTES.md" not in old.text and "NOTES.md" in page
    assert f"/alice/past-tense/resolve/{shas[1]}/adapter_config.json" in old.text
    assert f"loradex pull alice/past-tense@{shas[1]}" in old.text
    history = get(web_hub, f"/{web_hub.parents[0]}/commits").text
    assert "Add training notes" in history


def test_a_repo_without_an_adapter_has_a_page_too(web_hub):
    page = get(web_hub, f"/{web_hub.notes}")
    assert page.status_code == 200
    assert "Not indexed as an adapter" in page.text and "No adapter here." in page.text
    assert web_hub.notes not in get(web_hub, "/models?per_page=100").text


def test_hydra_module_page_shows_its_heads(web_hub):
    page = html.unescape(get(web_hub, f"/{web_hub.hydra}").text)
    assert "Hydra (3 heads)" in page
    heads = re.search(r'<ol class="heads">(.*?)</ol>', page, re.S)
    assert heads is not None
    assert re.findall(r"Head (\d)", heads.group(1)) == ["0", "1", "2"]
    assert 'href="/alice/past-tense"' in heads.group(1)
    assert "PeftModel" not in page  # PEFT cannot load a Hydra module


def test_a_hostile_card_is_rendered_inert(web_hub):
    page = get(web_hub, f"/{web_hub.xss}").text
    card = re.search(r'<div class="card-body">(.*?)</div>\n', page, re.S)
    assert card is not None
    tags = HtmlTags()
    tags.feed(card.group(1))
    assert not tags.names & {"script", "svg", "iframe", "object", "style", "form", "input"}
    for name, value in tags.attributes:
        assert not name.startswith("on") and name != "style", name
        if name in ("href", "src"):
            assert value.startswith(("https://", "http://", "/", "#")), value
    assert "<!--" not in card.group(1)
    # What was refused stays as inert, escaped text.
    assert "[click me](javascript:alert(&#x27;javascript link&#x27;))" in card.group(1) \
        or "[click me](javascript:alert('javascript link'))" in card.group(1)
    assert '<a href="https://example.org/ok" rel="noopener noreferrer nofollow">' in card.group(1)
    assert page.count("<script") == 1  # the page's own /static/web.js, nothing else
    listing = get(web_hub, "/models?q=harmless").text
    assert "<script>alert" not in listing and "&lt;script&gt;" in listing


def test_private_repo_needs_a_signed_in_reader(web_hub):
    private = web_hub.private
    assert get(web_hub, f"/{private}").status_code == 404
    assert private not in get(web_hub, "/models?tag=filler&per_page=100").text
    assert get(web_hub, "/team").status_code == 404  # team has nothing public
    bob = signed_in(web_hub, web_hub.server.bob)  # may not read team's repos
    assert bob.get(f"/{private}").status_code == 404
    alice = signed_in(web_hub, web_hub.server.alice)
    cookie = next(c for c in alice.cookies.jar if c.name == "ldx_token")
    assert cookie.has_nonstandard_attr("HttpOnly")
    page = alice.get(f"/{private}")
    assert page.status_code == 200 and "Private" in page.text
    assert web_hub.server.alice not in page.text
    listing = alice.get("/models?tag=filler&per_page=100").text
    assert private in listing and "Modules 1–8 of 8" in listing
    assert private in alice.get("/team").text
    download = alice.get(f"/{private}/resolve/main/adapter_config.json")
    assert download.status_code == 200 and b'"r": 16' in download.content
    assert get(web_hub, f"/{private}/resolve/main/adapter_config.json").status_code == 404
    form = alice.get(f"/{private}").text
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form)
    assert csrf is not None
    assert alice.post("/sign-out", data={"csrf_token": csrf.group(1)}).status_code == 303
    assert alice.get(f"/{private}").status_code == 404


def test_sign_in_refuses_wrong_tokens_and_forged_forms(web_hub):
    client = httpx.Client(base_url=web_hub.url)
    page = client.get("/sign-in").text
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert csrf is not None
    wrong = client.post("/sign-in", data={"csrf_token": csrf.group(1), "token": "ldx_nope"})
    assert wrong.status_code == 401
    assert "That token was not accepted" in wrong.text and "ldx_nope" not in wrong.text
    assert "ldx_token" not in wrong.headers.get("set-cookie", "")
    token = web_hub.server.alice
    no_csrf = client.post("/sign-in", data={"token": token})
    assert no_csrf.status_code == 403 and "ldx_token" not in no_csrf.headers.get("set-cookie", "")
    forged = client.post("/sign-in", data={"csrf_token": "0" * 64, "token": token})
    assert forged.status_code == 403
    other_site = client.post("/sign-in", data={"csrf_token": csrf.group(1), "token": token},
                             headers={"Origin": "https://evil.example"})
    assert other_site.status_code == 403
    fresh = httpx.Client(base_url=web_hub.url)  # another browser: its own CSRF seed
    assert fresh.post("/sign-in", data={"csrf_token": csrf.group(1), "token": token}
                      ).status_code == 403
    assert client.post("/sign-out", data={}).status_code == 403
    away = client.post("/sign-in", data={"csrf_token": csrf.group(1), "token": token,
                                         "next": "//evil.example/x"})
    assert away.status_code == 303 and away.headers["location"] == "/"
    log = web_hub.server.log_path.read_text()
    assert token not in log


def test_base_model_and_author_pages(web_hub):
    base = "HuggingFaceTB/SmolLM2-135M-Instruct"
    page = get(web_hub, f"/base-models/{base}").text
    counts = dict(re.findall(r'>(LoRA|Hydra)</a></th><td>(\d+)</td>', page))
    assert counts == {"LoRA": "11", "Hydra": "1"}
    alice = signed_in(web_hub, web_hub.server.alice)
    counts = dict(re.findall(r'>(LoRA|Hydra)</a></th><td>(\d+)</td>',
                             alice.get(f"/base-models/{base}").text))
    assert counts == {"LoRA": "12", "Hydra": "1"}
    hydra_only = get(web_hub, f"/base-models/{base}?kind=hydra").text
    assert result_ids(hydra_only) == [web_hub.hydra]
    author = get(web_hub, "/alice").text
    assert set(result_ids(author)) == {web_hub.composed, *web_hub.parents, web_hub.notes}
    assert "<h1>alice</h1>" in author

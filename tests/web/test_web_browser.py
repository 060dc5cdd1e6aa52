"""The web pages in a real browser: Debian's Chromium driven by Playwright.

One browser for the whole file and a fresh context (cookies, storage) per test, against one
seeded ``loradex serve`` on SQLite. Each test saves a screenshot of where it ended under
pytest's temporary folder (``screenshots/``), never into the repository.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium, headless (``make test`` installs it when missing)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI and the build machines run as root, where Chromium's sandbox
        # cannot start.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go (pytest's temporary folder)."""
    return tmp_path_factory.mktemp("screenshots")


class Watched:
    """A page whose dialogs, console errors and script errors are recorded."""

    def __init__(self, page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []

        def on_dialog(dialog) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def quiet(self) -> bool:
        """Nothing ran, nothing complained."""
        return not (self.dialogs or self.console_errors or self.page_errors)


@pytest.fixture
def tab(browser, sqlite_web_hub, shots, request) -> Iterator[Watched]:
    """A page in a fresh context on the seeded server; screenshot saved at the end."""
    context = browser.new_context(base_url=sqlite_web_hub.url, accept_downloads=True,
                                  viewport={"width": 1280, "height": 900})
    watched = Watched(context.new_page())
    try:
        yield watched
    finally:
        watched.page.screenshot(path=str(shots / f"{request.node.name}.png"), full_page=True)
        context.close()


def result_links(page) -> list[str]:
    """The repo ids of a results list, in order."""
    return page.locator("li.result h3 a").all_inner_texts()


def test_search_filter_open_download_and_follow_the_family(tab, sqlite_web_hub):
    page = tab.page
    page.goto("/")
    page.get_by_label("Search", exact=True).fill("tense")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"/models\?q=tense"))
    assert set(result_links(page)) == {sqlite_web_hub.composed, "alice/past-tense"}
    page.get_by_label("Rank").fill("8")
    page.get_by_label("Kind").select_option("lora")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"rank=8.*kind=lora|kind=lora.*rank=8"))
    page.get_by_role("link", name=sqlite_web_hub.composed).click()
    page.wait_for_url(re.compile(r"/alice/composed-tense$"))
    assert page.get_by_role("heading", level=1).inner_text() == "alice/composed-tense"
    expected = page.locator("tr", has_text="adapter_config.json").locator("code.sha").inner_text()
    with page.expect_download() as got:
        page.get_by_role("link", name="adapter_config.json").click()
    download = got.value
    assert download.suggested_filename == "adapter_config.json"
    assert hashlib.sha256(Path(download.path()).read_bytes()).hexdigest() == expected
    assert page.get_by_role("img", name=re.compile("Loss over 10 evaluations")).is_visible()
    page.get_by_role("table").filter(has_text="Weight").get_by_role(
        "link", name="alice/past-tense").click()
    page.wait_for_url(re.compile(r"/alice/past-tense/tree/[0-9a-f]{40}$"))
    page.get_by_role("link", name="latest").click()
    page.wait_for_url(re.compile(r"/alice/past-tense$"))
    page.locator("ul.children").get_by_role("link", name=sqlite_web_hub.composed).click()
    page.wait_for_url(re.compile(r"/alice/composed-tense$"))
    assert tab.quiet(), (tab.dialogs, tab.console_errors, tab.page_errors)


def test_pagination_walks_every_result_once(tab, sqlite_web_hub):
    page = tab.page
    page.goto("/models?tag=filler&per_page=3")
    seen = result_links(page)
    while page.get_by_role("link", name="Next page").count():
        page.get_by_role("link", name="Next page").click()
        page.wait_for_load_state()
        seen += result_links(page)
    assert seen == list(sqlite_web_hub.fillers)
    page.get_by_role("link", name="Previous page").click()
    assert result_links(page) == list(sqlite_web_hub.fillers[3:6])
    assert tab.quiet()


def test_a_hostile_card_runs_nothing(tab, sqlite_web_hub):
    page = tab.page
    page.goto(f"/{sqlite_web_hub.xss}")
    page.wait_for_load_state("networkidle")
    for link in page.locator(".card-body a").all():
        href = link.get_attribute("href")
        assert href is None or href.startswith(("https://", "http://", "/", "#")), href
    # Clicking what is left of the payloads runs nothing either (the links lost their href).
    page.locator(".card-body details").click()
    stripped = page.locator(".card-body a:not([href])")
    assert stripped.count() == 3
    for i in range(stripped.count()):
        stripped.nth(i).click()
    page.wait_for_timeout(300)
    scripts = page.evaluate("[...document.scripts].map(s => s.src)")
    assert scripts == [f"{sqlite_web_hub.url}/static/web.js"]
    assert page.evaluate("document.querySelectorAll('.card-body [onerror], .card-body svg,"
                         " .card-body iframe, .card-body [style]').length") == 0
    assert page.url.endswith(f"/{sqlite_web_hub.xss}")
    assert tab.quiet(), (tab.dialogs, tab.console_errors, tab.page_errors)


def test_private_repo_follows_sign_in_and_out(tab, sqlite_web_hub):
    page, private = tab.page, sqlite_web_hub.private
    assert page.goto(f"/{private}").status == 404
    page.goto("/models?tag=filler&per_page=100")
    assert private not in result_links(page)
    page.get_by_role("link", name="Sign in").click()
    page.get_by_label("Access token").fill("ldx_not-a-real-token")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text().startswith("That token was not accepted")
    assert "ldx_not-a-real-token" not in page.content()
    page.get_by_label("Access token").fill(sqlite_web_hub.server.alice)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/models\?tag=filler&per_page=100$"))
    assert private in result_links(page)
    assert page.get_by_text("Signed in as").inner_text().endswith("alice")
    assert page.evaluate("document.cookie").find("ldx_token") == -1  # HttpOnly
    cookie = next(c for c in page.context.cookies() if c["name"] == "ldx_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.goto(f"/{private}").status == 200
    assert sqlite_web_hub.server.alice not in page.content()
    assert all(sqlite_web_hub.server.alice not in u for u in (page.url,))
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/$"))
    assert private not in result_links(page)
    assert page.goto(f"/{private}").status == 404
    assert not [c for c in page.context.cookies() if c["name"] == "ldx_token"]
    # The browser reports each error answer the test asked for (two 404s signed out, the
    # refused token's 401), and nothing else.
    assert sorted(tab.console_errors) == sorted(
        [f"Failed to load resource: the server responded with a status of {status}"
         for status in ("404 (Not Found)", "401 (Unauthorized)", "404 (Not Found)")]
    ), tab.console_errors
    assert not tab.dialogs and not tab.page_errors


def test_keyboard_navigation_and_accessibility_tree(tab, sqlite_web_hub):
    page = tab.page
    page.goto("/models")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("plural")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"q=plural"))
    # Every form control is labelled, every page has one h1, headings do not skip a level.
    for path in ("/models", f"/{sqlite_web_hub.composed}", f"/{sqlite_web_hub.hydra}",
                 "/sign-in", "/alice", "/base-models/HuggingFaceTB/SmolLM2-135M-Instruct"):
        page.goto(path)
        unlabelled = page.evaluate(
            "[...document.querySelectorAll('input:not([type=hidden]), select')]"
            ".filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.name)")
        assert unlabelled == [], (path, unlabelled)
        levels = [int(t[1]) for t in page.evaluate(
            "[...document.querySelectorAll('h1,h2,h3,h4')].map(h => h.tagName)")]
        assert levels.count(1) == 1 and levels[0] == 1, (path, levels)
        assert all(b - a <= 1 for a, b in itertools.pairwise(levels)), (path, levels)
        assert page.evaluate("[...document.images].filter(i => !i.hasAttribute('alt')).length"
                             ) == 0
    page.goto(f"/{sqlite_web_hub.composed}")
    tree = page.locator("main").aria_snapshot()
    assert '- heading "alice/composed-tense" [level=1]' in tree
    for heading in ("Model card", "Family", "Files", "History", "Metadata", "Use it"):
        assert f'- heading "{heading}" [level=2]' in tree, heading
    assert re.search(r'img "Loss over 10 evaluations, from 2\.3100 to 1\.3600', tree)
    assert re.search(r'img "Weights of the parents: alice/past-tense \+0\.720, '
                     r'alice/plural -0\.180"', tree)
    page.goto("/models")
    form = page.get_by_role("form", name="Search and filter modules").aria_snapshot()
    for label in ("Search", "Base model", "Rank", "Task", "Tag", "Author", "Licence"):
        assert f'"{label}"' in form, label
    assert tab.quiet()

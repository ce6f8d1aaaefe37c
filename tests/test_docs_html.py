"""The built documentation site, read as a reader's browser would: every internal link and anchor resolves, every
image exists, the API pages render their "Returns" entries cleanly, and no page publishes the development log.

CI builds the site (``make docs``) before ``make test``; these tests read ``docs/_build/html`` and skip when it does
not exist.
"""

from __future__ import annotations

import re
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "docs" / "_build" / "html"

# development-log words that must not reach a reader: session numbers, issue numbers, commit hashes, TODOs
DEV_LOG = {
    "a session number": re.compile(r"\bsessions? \d", re.IGNORECASE),
    "an issue number": re.compile(r"\bissues? #?\d", re.IGNORECASE),
    "a commit hash": re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b"),
    "a TODO": re.compile(r"\bTODO\b"),
    "a device loan": re.compile(r"\bno GPU (was )?lent\b", re.IGNORECASE),
}
# commits of other repositories that pengster.datasets downloads from: data provenance, not development log
DATA_PINS = {
    pin
    for module in ("_fetch.py", "_snareseq2.py")
    for pin in re.findall(r"\b[0-9a-f]{7,40}\b", (ROOT / "src" / "pengster" / "datasets" / module).read_text())
}


def data_pin(text: str) -> bool:
    return any(pin.startswith(text) or text.startswith(pin) for pin in DATA_PINS)


class Page(HTMLParser):
    """The ids, links, image sources and prose (text outside code, scripts and styles) of one HTML page."""

    SKIPPED = {"script", "style", "pre", "code"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.resources: list[str] = []
        self.prose: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("id", "name"):
            if values.get(key):
                self.ids.add(values[key])
        if tag == "a" and values.get("href"):
            self.links.append(values["href"])
        if tag in ("img", "script") and values.get("src"):
            self.resources.append(values["src"])
        if tag == "link" and values.get("href"):
            self.resources.append(values["href"])
        if tag in self.SKIPPED:
            self._skipping += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.prose.append(data)


def site_pages() -> list[Path]:
    if not SITE.is_dir():
        return []
    return sorted(
        path for path in SITE.rglob("*.html") if not {"_static", "_sources"} & set(path.relative_to(SITE).parts)
    )


@cache
def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def internal(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and not url.startswith("//")


def page_id(path: Path) -> str:
    return str(path.relative_to(SITE))


@pytest.fixture(scope="module")
def pages() -> list[Path]:
    found = site_pages()
    if not found:
        pytest.skip(f"{SITE} does not exist: build the site first (make docs)")
    return found


def test_the_site_has_its_pages(pages):
    names = {page_id(path) for path in pages}
    expected = {"index.html", "api.html", "benchmarks.html", "tutorials.html", "user_guide/jointvae.html"}
    assert expected <= names, f"missing pages: {sorted(expected - names)}"
    assert any(name.startswith("tutorials/") for name in names), "no tutorial page was built"


def test_every_internal_link_and_anchor_resolves(pages):
    broken = []
    for path in pages:
        for href in parse(path).links:
            if not internal(href):
                continue
            parts = urlsplit(href)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            fragment = unquote(parts.fragment)
            if not target.exists():
                broken.append(f"{page_id(path)}: {href} (no such file)")
            elif fragment and target.suffix == ".html" and fragment not in parse(target).ids:
                broken.append(f"{page_id(path)}: {href} (no id {fragment!r} in {target.name})")
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(sorted(set(broken))[:40])


def test_every_image_and_resource_exists(pages):
    missing = []
    for path in pages:
        for src in parse(path).resources:
            if internal(src) and not src.startswith("data:"):
                target = (path.parent / unquote(urlsplit(src).path)).resolve()
                if not target.exists():
                    missing.append(f"{page_id(path)}: {src}")
    assert not missing, f"{len(missing)} missing images or resources:\n" + "\n".join(sorted(set(missing))[:40])


RETURNS = re.compile(r">Returns<span class=\"colon\">:</span></dt>\s*<dd[^>]*>(.*?)</dd>", re.DOTALL)
FIELD_LIST = re.compile(r"<dl class=\"field-list[^\"]*\">(.*?)</dl>", re.DOTALL)
TAG = re.compile(r"<[^>]+>")


def test_api_pages_render_one_clean_returns_entry(pages):
    api_pages = [path for path in pages if path.parent.name == "generated"]
    assert api_pages, "no API pages were built"
    returns, problems = 0, []
    for path in api_pages:
        html = path.read_text(encoding="utf-8")
        for match in RETURNS.finditer(html):
            returns += 1
            text = TAG.sub("", match.group(1)).strip()
            if not text or text.startswith(":"):
                problems.append(f"{page_id(path)}: a Returns entry reads {text[:60]!r}")
        for field_list in FIELD_LIST.finditer(html):
            if ">Returns<" in field_list.group(1) and ">Return type<" in field_list.group(1):
                problems.append(f"{page_id(path)}: both a 'Returns' and a 'Return type' block")
    assert returns > 20, f"only {returns} Returns entries found: has the page markup changed?"
    assert not problems, "\n".join(problems[:40])


def test_no_page_publishes_the_development_log(pages):
    found = []
    for path in pages:
        prose = " ".join(parse(path).prose)
        for what, pattern in DEV_LOG.items():
            for match in pattern.finditer(prose):
                if what == "a commit hash" and data_pin(match.group()):
                    continue
                context = prose[max(0, match.start() - 50) : match.end() + 50].replace("\n", " ")
                found.append(f"{page_id(path)}: {what}: ...{context}...")
    assert not found, f"{len(found)} development-log phrases on the site:\n" + "\n".join(found[:40])


def test_no_page_links_to_a_repository_that_does_not_exist(pages):
    """pengster has no public repository yet: no button, source link or install line may point to one."""
    offending = sorted(
        f"{page_id(path)}: {href}"
        for path in pages
        for href in parse(path).links
        if "github.com/pengster" in href.lower()
    )
    assert not offending, f"{len(offending)} links to github.com/pengster:\n" + "\n".join(offending[:20])


def test_the_benchmark_pages_are_on_the_site(pages):
    """The Benchmarks page links its method and result pages, which the site builds from benchmarks/."""
    names = {page_id(path) for path in pages}
    assert {"benchmarks/README.html", "benchmarks/results/accuracy.html", "benchmarks/results/tune.html"} <= names
    speed = (SITE / "benchmarks.html").read_text(encoding="utf-8")
    assert "H100" not in speed, "the GPU speed table was measured with 0.1.0 and is not shown"

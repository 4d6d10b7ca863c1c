"""The documentation site as a browser shows it (headless Chromium, Debian's build, driven by selenium).

The built site is served on 127.0.0.1 and the concepts, kernel, PDE, gallery and two API pages (the
density solvers and the theory) are opened. Each must show its formulas typeset by KaTeX (no TeX source and no pseudo-TeX left in the
visible text, no KaTeX error), load every image, and keep docstring examples in ``<pre><code>``.
Every built page is also parsed for unknown tags: Markdown passes ``<x, y>`` through as an HTML tag
that the browser hides, which is how formulas used to vanish.

Screenshots go to ``$MEANFIELD_SCREENSHOTS`` when set (to look at them), else to the test's folder.
CI installs chromium and chromium-driver (.ci/run); elsewhere the browser tests are skipped without
them, and fail under ``CI=true``.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

PAGES = {
    "concepts": "concepts/",
    "kernel": "kernel/",
    "pde": "pde/",
    "gallery": "presets/",
    "api-pde": "api/pde/",
    "api-theory": "api/theory/",
}
MATH_PAGES = {"concepts", "kernel", "pde", "gallery", "api-pde", "api-theory"}

# HTML5, the SVG that mkdocs-material inlines, and the MathML that KaTeX writes
KNOWN_TAGS = set(
    """
a abbr address area article aside audio b base bdi bdo blockquote body br button canvas caption cite code col
colgroup data datalist dd del details dfn dialog div dl dt em embed fieldset figcaption figure footer form h1 h2
h3 h4 h5 h6 head header hgroup hr html i iframe img input ins kbd label legend li link main map mark menu meta
meter nav noscript object ol optgroup option output p picture pre progress q rp rt ruby s samp script search
section select slot small source span strong style sub summary sup table tbody td template textarea tfoot th
thead time title tr track u ul var video wbr
svg path g circle rect line polyline polygon ellipse defs use symbol clippath lineargradient stop text tspan
pattern desc
math semantics annotation mrow mi mo mn msup msub msubsup mfrac msqrt mroot mtext mspace mtable mtr mtd mover
munder munderover mpadded mphantom menclose mstyle
""".split()
)

# text that is TeX source or the project's old pseudo-TeX, if it shows outside code and formulas
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\[a-zA-Z]{2,}\b|[_^]\{")
# a docstring example that became a paragraph: a line opening with an assignment from a call
CODE_AS_PROSE = re.compile(r"(^|\n)\s*[A-Za-z_]\w* = [A-Za-z_][\w.]*\(")


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.unknown: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in KNOWN_TAGS:
            self.unknown.append(tag)


def unknown_tags(site_dir: Path) -> dict[str, list[str]]:
    found = {}
    for page in sorted(site_dir.rglob("*.html")):
        parser = _Tags()
        parser.feed(page.read_text())
        if parser.unknown:
            found[str(page.relative_to(site_dir))] = parser.unknown
    return found


@pytest.mark.slow
def test_built_html_has_no_unknown_tags(site):
    out, run = site
    assert run.returncode == 0, run.stderr[-4000:]
    found = unknown_tags(out)
    assert not found, found


# ----------------------------------------------------------------------------- the browser
def _chromium():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install {missing} (.ci/run)")
        pytest.skip(f"no {missing} (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def server(site):
    out, run = site
    assert run.returncode == 0, run.stderr[-4000:]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    path, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = path
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


VISIBLE_TEXT = """
const main = document.querySelector("article") || document.body;
const copy = main.cloneNode(true);
for (const el of copy.querySelectorAll("pre, code, .katex, script, style, .headerlink")) el.remove();
return copy.textContent;
"""

IMAGES = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.images);
Promise.all(imgs.map(img => new Promise(resolve => {
  const probe = new Image();
  probe.onload = () => resolve([img.getAttribute("src"), probe.naturalWidth]);
  probe.onerror = () => resolve([img.getAttribute("src"), 0]);
  probe.src = img.src;
}))).then(done);
"""


def _open(browser, url):
    browser.get(url)
    # the math is typeset on mkdocs-material's document$ event: wait until no arithmatex is left raw
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "Array.from(document.querySelectorAll('.arithmatex')).every(e => e.dataset.typeset)"
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_in_a_browser(name, server, browser, tmp_path):
    _open(browser, server + PAGES[name])
    shots = Path(os.environ.get("MEANFIELD_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shots / f"{name}.png"))

    n_math = browser.execute_script("return document.querySelectorAll('.katex').length")
    n_errors = browser.execute_script("return document.querySelectorAll('.katex-error').length")
    raw = browser.execute_script(
        "return document.querySelectorAll('.arithmatex:not([data-typeset])').length"
    )
    if name in MATH_PAGES:
        assert n_math > 0, f"{name}: no typeset formula"
    assert n_errors == 0 and raw == 0, (name, n_errors, raw)

    text = browser.execute_script(VISIBLE_TEXT)
    leftovers = sorted({m.group(0) for m in RAW_TEX.finditer(text)})
    assert not leftovers, f"{name}: TeX or pseudo-TeX outside formulas: {leftovers}"

    images = browser.execute_async_script(IMAGES)
    broken = [src for src, width in images if not width]
    assert not broken, f"{name}: images that do not load: {broken}"
    if name == "gallery":
        assert len(images) >= 20, len(images)

    # docstring examples: code blocks, never a paragraph of run-on code
    paragraphs = browser.execute_script(
        "return Array.from(document.querySelectorAll('article p')).map(p => p.innerText)"
    )
    prose_code = [p[:80] for p in paragraphs if CODE_AS_PROSE.search(p)]
    assert not prose_code, f"{name}: code shown as a paragraph: {prose_code}"
    if name == "api-pde":
        examples = browser.execute_script(
            "return Array.from(document.querySelectorAll('article pre code')).map(c => c.innerText)"
            ".filter(t => t.includes('.solve('))"
        )
        assert examples, "api-pde: the solvers' examples are not in <pre><code>"

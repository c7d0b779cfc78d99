"""Check the built documentation in a real browser: headless Chromium, driven by selenium.

    python docs/browser_check.py [SITE] [--screenshots DIR]

SITE is the built HTML site (default ``docs/_build/html``). The site is served on a local port and every page is
opened in Chromium. The check fails (exit status 1) on:

* a JavaScript error or failed request in the browser's console;
* math MathJax did not render: a math element without its rendered form, a TeX error, or TeX source left in
  the page's text;
* a broken internal link: a link or image to a file the site lacks, or to an anchor its page lacks;
* an image that did not load.

It writes screenshots of the front page, a loss page with formulas and an API page to DIR (default
``docs/_build/screenshots``). Without Chromium and its driver (``apt-get install chromium chromium-driver`` on
Debian) or selenium (``pip install "boxloss[docs]"``) it says so and exits with status 0, skipping the check;
``--require`` makes that a failure.
"""

from __future__ import annotations

import argparse
import functools
import html.parser
import http.server
import os
import shutil
import sys
import threading
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
SCREENSHOTS = {"front_page.png": "index.html", "loss_page_classic.png": "losses/classic.html",
               "api_page_losses.png": "api/losses.html"}
TEX_LEFT_OVER = ("\\frac", "\\mathrm", "\\lVert", "\\rho", "\\mathcal", "\\alpha", "\\setminus")


class _Links(html.parser.HTMLParser):
    """The links, images and anchors of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list = []
        self.anchors: set = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.anchors.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.anchors.add(attrs["name"])
        for key in ("href", "src"):
            if attrs.get(key) and tag in ("a", "img", "link", "script"):
                self.targets.append(attrs[key])


def broken_links(site: str) -> list:
    """Internal links and images of every page whose file or anchor is missing."""
    pages = {}
    for root, _, files in os.walk(site):
        for name in files:
            if name.endswith(".html"):
                path = os.path.join(root, name)
                parser = _Links()
                with open(path, encoding="utf-8") as f:
                    parser.feed(f.read())
                pages[os.path.relpath(path, site)] = parser
    broken = []
    for page, parser in pages.items():
        for target in parser.targets:
            parts = urllib.parse.urlsplit(target)
            if parts.scheme or parts.netloc or target.startswith(("mailto:", "javascript:", "data:")):
                continue
            rel = os.path.normpath(os.path.join(os.path.dirname(page), urllib.parse.unquote(parts.path))) \
                if parts.path else page
            if not os.path.exists(os.path.join(site, rel)):
                broken.append(f"{page}: {target} (no file {rel})")
            elif parts.fragment and rel.endswith(".html") and parts.fragment not in pages[rel].anchors:
                broken.append(f"{page}: {target} (no anchor #{parts.fragment} in {rel})")
    return broken


def _serve(site: str):
    handler = functools.partial(_QuietHandler, directory=site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _browser():
    """A headless Chromium driven by selenium, or the reason there is none."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, 'selenium is not installed (pip install "boxloss[docs]")'
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        return None, "Chromium or its driver is not installed (Debian: apt-get install chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options), None


_MATH_STATE = """
const done = arguments[arguments.length - 1];
const ready = (window.MathJax && MathJax.startup && MathJax.startup.promise) || Promise.resolve();
ready.then(() => {
  const maths = Array.from(document.querySelectorAll('.math'));
  done({
    math: maths.length,
    unrendered: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
    errors: Array.from(document.querySelectorAll('mjx-merror')).map(m => m.textContent.slice(0, 80)),
    mathjax: !!window.MathJax,
    text: document.body.innerText,
    images: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
  });
}).catch(e => done({failed: String(e)}));
"""


def check_in_browser(site: str, screenshots: str, driver) -> list:
    problems = []
    server = _serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    pages = sorted(os.path.relpath(os.path.join(r, n), site).replace(os.sep, "/")
                   for r, _, fs in os.walk(site) for n in fs if n.endswith(".html"))
    os.makedirs(screenshots, exist_ok=True)
    driver.set_script_timeout(30)
    rendered = 0
    try:
        for page in pages:
            driver.get(base + page)
            state = driver.execute_async_script(_MATH_STATE)
            if "failed" in state:
                problems.append(f"{page}: MathJax failed: {state['failed']}")
                continue
            rendered += state["math"] - len(state["unrendered"])
            problems += [f"{page}: math not rendered: {m!r}" for m in state["unrendered"]]
            problems += [f"{page}: TeX error: {m!r}" for m in state["errors"]]
            if state["math"] and not state["mathjax"]:
                problems.append(f"{page}: math on the page but MathJax not loaded")
            problems += [f"{page}: TeX source in the text: {t!r}" for t in TEX_LEFT_OVER if t in state["text"]]
            problems += [f"{page}: image did not load: {src}" for src in state["images"]]
            for entry in driver.get_log("browser"):
                if entry["level"] in ("SEVERE", "ERROR"):
                    problems.append(f"{page}: console: {entry['message']}")
            for name, target in SCREENSHOTS.items():
                if target == page:
                    height = driver.execute_script("return document.documentElement.scrollHeight")
                    driver.set_window_size(1280, min(max(height, 1000), 3000))
                    driver.save_screenshot(os.path.join(screenshots, name))
                    driver.set_window_size(1280, 1000)
    finally:
        driver.quit()
        server.shutdown()
    print(f"opened {len(pages)} pages in Chromium; {rendered} formulas rendered by MathJax")
    missing = [name for name in SCREENSHOTS if not os.path.exists(os.path.join(screenshots, name))]
    problems += [f"no screenshot {name} (its page is missing)" for name in missing]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site", nargs="?", default=os.path.join(HERE, "_build", "html"))
    parser.add_argument("--screenshots", default=os.path.join(HERE, "_build", "screenshots"))
    parser.add_argument("--require", action="store_true", help="fail instead of skipping without Chromium")
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.site, "index.html")):
        print(f"error: no built site at {args.site} (build it: python -m sphinx -b html docs docs/_build/html)",
              file=sys.stderr)
        return 2
    problems = broken_links(args.site)
    driver, reason = _browser()
    if driver is None:
        print(f"browser check skipped: {reason}", file=sys.stderr)
        if args.require:
            return 1
    else:
        problems += check_in_browser(args.site, args.screenshots, driver)
    for problem in problems:
        print("FAIL", problem, file=sys.stderr)
    if problems:
        return 1
    print(f"no problems; screenshots in {args.screenshots}" if driver is not None else "internal links: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The documentation's own checks: the link checker of ``docs/browser_check.py`` finds what it must, and the
README's links point at files that exist. (The site itself is built with warnings as errors, its doctests run
and it is opened in Chromium by ``.ci/run``.)"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "docs"))

import browser_check  # noqa: E402


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def test_the_link_checker_reports_missing_files_and_anchors(tmp_path):
    site = str(tmp_path)
    _write(os.path.join(site, "index.html"),
           '<a href="api/losses.html#boxloss.giou_loss">ok</a> <a href="api/losses.html#nowhere">anchor</a> '
           '<a href="gone.html">file</a> <img src="_images/plot.png"> <a href="https://pytorch.org">external</a> '
           '<a href="#top">same page</a><span id="top"></span>')
    _write(os.path.join(site, "api", "losses.html"), '<dt id="boxloss.giou_loss"></dt><a href="../index.html">up</a>')
    broken = browser_check.broken_links(site)
    assert len(broken) == 3, broken
    assert any("#nowhere" in b for b in broken)
    assert any("gone.html" in b for b in broken)
    assert any("plot.png" in b for b in broken)


def test_the_link_checker_passes_a_whole_site(tmp_path):
    site = str(tmp_path)
    _write(os.path.join(site, "index.html"), '<a href="a%20b.html">space</a>')
    _write(os.path.join(site, "a b.html"), '<a href="index.html">back</a>')
    assert browser_check.broken_links(site) == []


def test_a_missing_site_is_an_error_naming_the_build_command(tmp_path, capsys):
    assert browser_check.main([str(tmp_path)]) == 2
    assert "sphinx" in capsys.readouterr().err


def test_the_readme_links_to_files_that_exist():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert len(local) >= 10
    missing = [link for link in local if not os.path.exists(os.path.join(ROOT, link))]
    assert not missing, missing


def test_the_version_is_the_changelogs_and_the_citations():
    import boxloss

    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as f:
        assert f"## {boxloss.__version__} - " in f.read()
    with open(os.path.join(ROOT, "CITATION.cff"), encoding="utf-8") as f:
        assert f"version: {boxloss.__version__}\n" in f.read()

"""The report in a real headless Chromium: renders without console errors, shows the summary table and
a plot per exchange, makes no network request, and a screenshot of it is not blank."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.report.archive import scenario, write_archive
from tests.report.browser import BrowserMissing, Chromium, colour_stats


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    rows, events = scenario()
    write_archive(root, rows, events)
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = subprocess.run([sys.executable, "-m", "stages.cli", "report", "--archive-url", str(root), "--output", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def browser(page):
    try:
        chromium = Chromium()
    except BrowserMissing as exc:
        pytest.fail(f"{exc}; this test needs a real browser and is never skipped (CI installs chromium)")
    try:
        chromium.open(page)
        chromium.settle("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 20", timeout=60)
        yield chromium
    finally:
        chromium.close()


def test_the_file_references_nothing_outside_itself(page):
    text = page.read_text()
    assert not re.search(r"<(script|img|iframe|link|source|video|audio)\b[^>]*\b(src|href)\s*=", text, re.I)
    assert "cdn.plot.ly" not in text.split("/**\n* plotly.js")[0]  # nothing before the inline bundle asks for a CDN
    assert "default-src 'none'" in text  # the page itself forbids every fetch


def test_renders_without_console_errors_or_network_requests(browser, page):
    assert browser.console_errors() == []
    own = page.resolve().as_uri()
    assert [url for url in browser.requests() if url != own and not url.startswith(("data:", "blob:", "about:"))] == []


def test_summary_table_and_a_plot_per_exchange(browser):
    rows = browser.evaluate("Array.from(document.querySelectorAll('#summary-table tbody tr')).map(r => r.cells.length)")
    assert len(rows) == 9 and set(rows) == {16}
    plots = browser.evaluate("""Object.fromEntries(Array.from(document.querySelectorAll('section.exchange')).map(s =>
        [s.id, Array.from(s.querySelectorAll('.js-plotly-plot')).map(p => [p.id, p.querySelectorAll('.main-svg').length,
         (p.layout && p.layout.xaxis && p.layout.xaxis.title && p.layout.xaxis.title.text) || '',
         p.data.length])]))""")
    assert sorted(plots) == [f"exchange-{e}" for e in ("binance", "bybit", "coinbase", "okx", "upbit")]
    for section, figures in plots.items():
        exchange = section.removeprefix("exchange-")
        assert [f[0] for f in figures] == [f"{exchange}-coverage", f"{exchange}-rate", f"{exchange}-latency", f"{exchange}-archive"]
        for div_id, svgs, xtitle, traces in figures:
            assert svgs > 0 and traces > 0, div_id
            assert "UTC" in xtitle, (div_id, xtitle)
    bars = browser.evaluate("document.querySelectorAll('#binance-coverage .bars path').length")
    assert bars >= 4  # recorded, gap, outage... drawn as bars


def test_screenshot_is_not_blank(browser, tmp_path):
    png = browser.screenshot()
    (tmp_path / "report.png").write_bytes(png)
    colours, inked = colour_stats(png)
    assert colours > 20 and inked > 0.03, (colours, inked)



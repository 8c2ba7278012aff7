"""The run report in a real browser (Debian's chromium through Selenium, the ``chromium``
fixture): opened from ``file://``, every section heading renders and every embedded plot decodes
(natural width > 0), with nothing fetched from elsewhere.

``SYNPREF_SCREENSHOT_DIR=docs`` also saves the page there (``report.png``, the README's
screenshot), as the annotation page's browser test does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synpref_core.report import render_report, write_report
from tests.browser import browser
from tests.unit.test_report import demo_summary


@pytest.mark.timeout(300)
def test_the_report_renders_in_chromium(chromium, tmp_path):
    from selenium.webdriver.common.by import By

    report = render_report(demo_summary(), "runs/demo")
    write_report(report, tmp_path)
    driver = browser(chromium, 1200, 2400)
    try:
        driver.get((tmp_path / "report.html").as_uri())
        headings = [h.text for h in driver.find_elements(By.TAG_NAME, "h2")]
        assert headings[:4] == ["Stage 1 rounds", "Retrieval", "Judges", "Human verification"]
        assert headings[-1] == "Wall time" and len(headings) == 9
        widths = driver.execute_script(
            "return Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth]);"
        )
        assert sorted(alt for alt, _, _ in widths) == sorted(report.figures)
        assert all(done and width > 0 for _, done, width in widths), widths
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".filter(n => !n.startsWith('data:'));"
        )
        assert fetched == []
        _screenshot(driver, tmp_path)
    finally:
        driver.quit()


def _screenshot(driver, tmp_path: Path) -> None:
    """The top of the page (the first sections), as a reader first sees it."""
    driver.set_window_size(1200, 1500)
    driver.save_screenshot(str(tmp_path / "report.png"))
    target = os.environ.get("SYNPREF_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / "report.png"))

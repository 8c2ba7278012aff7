"""A real browser for tests: Debian's chromium and chromedriver driven by Selenium, installed
with apt-get when missing (``make chromium`` does the same by hand). Shared by the Prefect UI
test and the human verification app's browser test through the ``chromium`` fixture
(``tests/conftest.py``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest


def install_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installed with apt-get when missing; skips the test,
    saying why, only when they cannot be installed."""
    pytest.importorskip("selenium", reason="selenium (the dev extra) is not installed")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        apt = shutil.which("apt-get")
        if apt is None:
            pytest.skip("chromium/chromedriver are missing and there is no apt-get to install them")
        sudo: list[str] = []
        if os.geteuid() != 0:
            if not shutil.which("sudo"):
                pytest.skip("chromium/chromedriver are missing; apt-get needs root (or sudo)")
            sudo = ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, apt, "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(
            [*sudo, apt, "install", "-y", "-q", "chromium", "chromium-driver"],
            check=True,
            env=env,
            capture_output=True,
        )
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "apt-get installed chromium, yet it is not on PATH"
    return browser, driver


def browser(paths: tuple[str, str], width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium session (quit it when done)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(options=options, service=Service(paths[1]))

"""The annotation page in a real browser (Debian's chromium through Selenium, installed by the
``chromium`` fixture): log in, open the first item, label it with the keyboard only (``2`` then
Enter), come back with ``p``, and find the verdict stored. Real PandaLM pairs, a real server.

``SYNPREF_SCREENSHOT_DIR=docs`` also saves the annotation page there (the README's screenshot).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from synpref_core.config import IngestConfig, SourceSpec
from synpref_core.human import auth, store
from synpref_core.human.batches import BatchConfig, create_batch
from synpref_core.human.web import AppSettings
from synpref_core.ingest.pipeline import run_ingest
from tests.browser import browser
from tests.conftest import DATA
from tests.human.conftest import PASSWORD, LiveServer


@pytest.fixture
def pandalm_store(tmp_path) -> str:
    config = IngestConfig(
        sources=[SourceSpec(format="pandalm", paths=[str(DATA / "pandalm")])],
        out=str(tmp_path / "pairs"),
    )
    pairs = run_ingest(config, progress=False).rsplit("/", 1)[0]
    url = f"sqlite:///{tmp_path / 'human.db'}"
    engine = store.open_engine(url)
    auth.create_user(engine, "alice", "annotator", PASSWORD)
    create_batch(
        engine,
        BatchConfig(
            pairs=pairs, name="pandalm-demo", size=5, overlap=1, annotators=["alice"], seed=1
        ),
    )
    return url


@pytest.mark.timeout(300)
def test_label_an_item_with_the_keyboard(chromium, pandalm_store, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    with LiveServer(AppSettings(db_url=pandalm_store)) as live:
        driver = browser(chromium, 1400, 1100)
        wait = WebDriverWait(driver, 30)
        try:
            driver.get(live.url + "/")
            wait.until(lambda d: "/login" in d.current_url)
            driver.find_element(By.ID, "username").send_keys("alice")
            driver.find_element(By.ID, "password").send_keys(PASSWORD)
            driver.find_element(By.ID, "login").click()
            wait.until(lambda d: d.find_elements(By.ID, "start"))[0].click()
            wait.until(lambda d: d.find_elements(By.ID, "verdict-form"))
            first_url = driver.current_url
            _screenshot(driver, tmp_path)
            ActionChains(driver).send_keys("2").perform()
            assert driver.find_element(By.ID, "v-second").is_selected()
            ActionChains(driver).send_keys(Keys.ENTER).perform()
            wait.until(lambda d: d.current_url != first_url and d.find_elements(By.ID, "prev"))
            ActionChains(driver).send_keys("p").perform()
            recorded = wait.until(lambda d: d.find_elements(By.ID, "recorded"))[0].text
            assert driver.current_url == first_url and "second" in recorded
        finally:
            driver.quit()

    engine = store.open_engine(pandalm_store)
    with store.reading(engine) as session:
        (verdict,) = session.scalars(select(store.Verdict)).all()
    item_id = int(first_url.rsplit("/", 1)[1])
    assert (verdict.item_id, verdict.verdict, verdict.confidence) == (item_id, "second", 3)
    assert verdict.seconds >= 0.0


def _screenshot(driver, tmp_path: Path) -> None:
    driver.save_screenshot(str(tmp_path / "annotation-page.png"))
    target = os.environ.get("SYNPREF_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / "annotation-page.png"))

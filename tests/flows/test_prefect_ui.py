"""The Prefect UI as a new user meets it, in a real browser: a local Prefect server
(infra/prefect/server.sh) and a worker on the `synpref` process pool (infra/prefect/worker.sh),
`prefect deploy --prefect-file infra/prefect/prefect.yaml --name retrieve`, then headless Chromium
(Selenium) opens the deployment from the UI's landing page, picks Run → Custom run, changes
`round` in the form, submits, and the flow run completes on the worker.

The deployment is given tiny inputs (a small ingest, a tiny random-weight RM, stores under
tmp_path) so that the run takes a minute or two on 2 CPUs; the form still shows every field.
Chromium comes from Debian (`apt-get install chromium chromium-driver`): the `chromium` fixture
(tests/conftest.py, tests/browser.py) installs it when missing and apt-get is there, and skips,
saying why, only when it cannot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser import browser as _browser
from tests.prefect_helpers import api_call, deploy, wait_for_flow_run

ROUND = 2
RUN_TIMEOUT_S = 480


def _tiny_retrieve_config(tmp_path: Path) -> dict[str, Any]:
    from tests.flow_helpers import tiny_retrieve_config

    return tiny_retrieve_config(tmp_path).model_dump(mode="json")


def _click(driver: Any, element: Any) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def _click_when(wait: Any, find: Any) -> None:
    """Find (``find(driver)`` → elements) and click the first, retrying while the page renders."""

    def attempt(driver: Any) -> bool:
        found = find(driver)
        if found:
            _click(driver, found[0])
        return bool(found)

    wait.until(attempt)


def _field_input(driver: Any, label: str) -> Any:
    """The input of the form field labelled ``label`` (the UI adds " (Optional)")."""
    from selenium.webdriver.common.by import By

    text = f"normalize-space(text())='{label}' or normalize-space(text())='{label} (Optional)'"
    caption = driver.find_element(By.XPATH, f"//*[{text}]")
    box = caption.find_element(By.XPATH, "./ancestor::*[.//input or .//textarea][1]")
    return box.find_element(By.CSS_SELECTOR, "input, textarea")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_custom_run_form_changes_round_and_the_run_completes(tmp_path, chromium, prefect_stack):
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    api, ui, env = prefect_stack["api"], prefect_stack["ui"], prefect_stack["env"]
    config = _tiny_retrieve_config(tmp_path)
    deploy("retrieve", env, {"config": config})
    deployment = api_call("GET", f"{api}/deployments/name/retrieve/retrieve").json()
    assert deployment["parameters"]["config"]["round"] == 1

    driver = _browser(chromium)
    rendering = (StaleElementReferenceException, ElementClickInterceptedException)
    wait = WebDriverWait(driver, 60, ignored_exceptions=rendering)
    try:
        # the landing page, as a new user opens it; then the deployment, Run → Custom run
        driver.get(ui)
        wait.until(lambda d: "/dashboard" in d.current_url)
        driver.get(f"{driver.current_url.split('/dashboard')[0]}/deployments")
        _click_when(
            wait, lambda d: d.find_elements(By.XPATH, f"//a[contains(@href, '{deployment['id']}')]")
        )
        _click_when(
            wait, lambda d: [b for b in d.find_elements(By.TAG_NAME, "button") if b.text == "Run"]
        )
        _click_when(
            wait, lambda d: d.find_elements(By.XPATH, "//*[normalize-space(text())='Custom run']")
        )
        wait.until(lambda d: d.current_url.split("?")[0].endswith("/run"))

        round_input = wait.until(lambda d: _field_input(d, "Round"))
        assert round_input.get_attribute("value") == "1"
        assert _field_input(driver, "Rm").get_attribute("value") == config["rm"]
        driver.save_screenshot(str(tmp_path / "form.png"))
        _click(driver, round_input)
        round_input.send_keys(Keys.CONTROL, "a")
        round_input.send_keys(str(ROUND))
        assert round_input.get_attribute("value") == str(ROUND)
        submit = [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text == "Submit"]
        _click(driver, submit[-1])

        flow_filter = {"deployments": {"id": {"any_": [deployment["id"]]}}}
        runs = wait.until(
            lambda _: api_call("POST", f"{api}/flow_runs/filter", json=flow_filter).json(),
            message=f"no flow run after Submit:\n{driver.find_element(By.TAG_NAME, 'body').text}",
        )
        driver.save_screenshot(str(tmp_path / "submitted.png"))
    finally:
        driver.quit()

    assert len(runs) == 1
    sent = runs[0]["parameters"]["config"]
    assert sent == {**config, "round": ROUND}, "the form sends the rest as shown"
    flow_run = wait_for_flow_run(api, runs[0]["id"], RUN_TIMEOUT_S)
    state = flow_run["state_type"]
    assert state == "COMPLETED", f"{flow_run['state']}\n{prefect_stack['worker'].tail()}"

    from synpref_core.retrieval.round import read_candidates

    candidates = read_candidates(str(tmp_path / "retrieve" / f"round-{ROUND}" / "candidates"))
    assert candidates.num_rows > 0 and set(candidates["round"].to_pylist()) == {ROUND}

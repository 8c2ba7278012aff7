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

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import browser as _browser
from tests.conftest import REPO

ROUND = 2
RUN_TIMEOUT_S = 480


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process:
    """A subprocess in its own process group, its output in a log file; stopped with its
    children (a worker's flow-run subprocesses) at teardown."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=self.handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.handle.close()


@pytest.fixture
def prefect_stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A real local Prefect server on a free port (own PREFECT_HOME) and a process worker."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PYTHONPATH": str(REPO),  # flow runs import this checkout's code
        "SYNPREF_REPO": str(REPO),
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    started: list[_Process] = []
    try:
        server = _Process(
            ["bash", "infra/prefect/server.sh", "--host", "127.0.0.1", "--port", str(port)],
            env,
            tmp_path / "server.log",
        )
        started.append(server)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.proc.poll() is None, f"server exited:\n{server.tail()}"
            assert time.monotonic() < deadline, f"server not up in 180 s:\n{server.tail()}"
            time.sleep(1)
        worker = _Process(["bash", "infra/prefect/worker.sh"], env, tmp_path / "worker.log")
        started.append(worker)
        deadline = time.monotonic() + 120
        while httpx.get(f"{api}/work_pools/synpref", timeout=10).status_code != 200:
            assert worker.proc.poll() is None, f"worker exited:\n{worker.tail()}"
            assert time.monotonic() < deadline, f"no `synpref` pool in 120 s:\n{worker.tail()}"
            time.sleep(1)
        yield {"api": api, "ui": api.removesuffix("/api"), "env": env, "worker": worker}
    finally:
        for process in reversed(started):
            process.stop()


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
    deploy = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "prefect"),
            "--no-prompt",
            "deploy",
            "--prefect-file",
            "infra/prefect/prefect.yaml",
            "--name",
            "retrieve",
            "--params",
            json.dumps({"config": config}),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    deployment = httpx.get(f"{api}/deployments/name/retrieve/retrieve").json()
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
            lambda _: httpx.post(f"{api}/flow_runs/filter", json=flow_filter).json(),
            message=f"no flow run after Submit:\n{driver.find_element(By.TAG_NAME, 'body').text}",
        )
        driver.save_screenshot(str(tmp_path / "submitted.png"))
    finally:
        driver.quit()

    assert len(runs) == 1
    sent = runs[0]["parameters"]["config"]
    assert sent == {**config, "round": ROUND}, "the form sends the rest as shown"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        flow_run = httpx.get(f"{api}/flow_runs/{runs[0]['id']}").json()
        state = flow_run["state_type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        assert time.monotonic() < deadline, f"{state} after {RUN_TIMEOUT_S} s"
        time.sleep(3)
    assert state == "COMPLETED", f"{flow_run['state']}\n{prefect_stack['worker'].tail()}"

    from synpref_core.retrieval.round import read_candidates

    candidates = read_candidates(str(tmp_path / "retrieve" / f"round-{ROUND}" / "candidates"))
    assert candidates.num_rows > 0 and set(candidates["round"].to_pylist()) == {ROUND}

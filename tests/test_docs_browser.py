"""The docs page in a real browser: Debian's headless Chromium, driven by Selenium, against the
ingest function on a real HTTP server with the real broker.

``make test`` installs ``chromium`` and ``chromium-driver`` from Debian when they are missing.
Selenium is pointed at that driver: its own download manager is never used.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from localkafka import read_records
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait
from support import make_token, served_ingest

from clickhouse.store import ViewStore
from functions.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_SECONDS = 30  # a bound, not an expectation: the page renders in about a second


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Chromium is missing: `make test` installs chromium and chromium-driver")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1600")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def ingest_url(settings: Settings, store: ViewStore) -> Iterator[str]:
    with served_ingest(settings, store) as url:
        yield url


def _wait(browser: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(browser, WAIT_SECONDS)


def _visible(browser: WebDriver, css: str) -> WebElement:
    element: WebElement = _wait(browser).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css))
    )
    return element


def _click(browser: WebDriver, css: str) -> None:
    _wait(browser).until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, css))
    ).click()


def _shown_operations(browser: WebDriver) -> set[tuple[str, str]]:
    _visible(browser, ".opblock")
    return {
        (
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path")
            or "",
        )
        for block in browser.find_elements(By.CSS_SELECTOR, ".opblock")
    }


def _console_errors(browser: WebDriver) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry for entry in entries if entry["level"] == "SEVERE"]


def _documented_operations(ingest_url: str) -> set[tuple[str, str]]:
    document = httpx.get(f"{ingest_url}/openapi.json").json()
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


@pytest.mark.parametrize("page", ["/docs", "/bigdata-api/openapi"])
def test_page_shows_every_operation(
    browser: WebDriver, ingest_url: str, page: str, tmp_path: Path
) -> None:
    browser.get(ingest_url + page)
    assert _shown_operations(browser) == _documented_operations(ingest_url)
    browser.save_screenshot(str(tmp_path / "docs.png"))
    assert browser.title == "Watch-progress ingest API"
    assert "OAS 3.1" in _visible(browser, ".info").text
    assert _console_errors(browser) == [], "nothing refused by the Content-Security-Policy"


def test_try_it_out_sends_a_view_with_the_token(
    browser: WebDriver, ingest_url: str, settings: Settings, tmp_path: Path
) -> None:
    viewer, movie = uuid.uuid4(), uuid.uuid4()
    browser.get(f"{ingest_url}/docs")
    _visible(browser, ".opblock")

    _click(browser, ".auth-wrapper .authorize")
    _visible(browser, ".auth-container input").send_keys(make_token(viewer))
    _click(browser, ".auth-btn-wrapper .authorize")
    _click(browser, ".auth-btn-wrapper .btn-done")

    _click(browser, "#operations-default-postView .opblock-summary")
    _click(browser, "#operations-default-postView .try-out__btn")
    body = _visible(browser, "#operations-default-postView textarea.body-param__text")
    body.send_keys(Keys.CONTROL, "a")
    body.send_keys(Keys.DELETE)
    body.send_keys(json.dumps({"movie_id": str(movie), "movie_time_offset": 754_000}))
    _click(browser, "#operations-default-postView .execute")

    status = _visible(
        browser, "#operations-default-postView .live-responses-table tbody .response-col_status"
    )
    assert status.text.startswith("202"), status.text
    response = _visible(
        browser, "#operations-default-postView .live-responses-table tbody .microlight"
    )
    assert json.loads(response.text)["status"] == "accepted"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", status)
    browser.save_screenshot(str(tmp_path / "docs-try-it-out.png"))

    (record,) = read_records(settings.kafka_bootstrap_servers, settings.views_topic, count=1)
    assert record.key() == str(viewer).encode()
    assert json.loads(record.value() or b"")["movie_id"] == str(movie)
    # The token was in the page's memory only.
    assert browser.execute_script("return window.localStorage.length") == 0
    assert _console_errors(browser) == []

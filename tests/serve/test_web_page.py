"""The web page at ``/`` in a real headless Chromium (Selenium): the boxes it draws are the API's.

Needs the system's Chromium and its driver (``apt-get install -y chromium chromium-driver``);
without them the test is skipped with that reason.
"""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from cvkit.data.visualize import COLOURS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Chromium and chromedriver: apt-get install -y chromium chromium-driver",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # no background connections: the test machines' network is closed
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _wait_for_state(driver, state: str, seconds: float = 20) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(
        lambda d: d.execute_script("return document.body.dataset.state") == state
    )


def test_uploaded_image_is_drawn_with_the_api_boxes(browser, server, client, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    image = np.random.default_rng(3).integers(0, 256, (90, 120, 3), np.uint8)
    path = tmp_path / "upload.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    threshold = 0.3
    expected = client.post(
        f"/v1/models/ssd/predict?score_threshold={threshold}", content=path.read_bytes()
    ).json()
    assert len(expected["boxes"]) > 0

    browser.get(server.url)
    _wait_for_state(browser, "ready")
    Select(browser.find_element(By.ID, "model")).select_by_value("ssd")
    field = browser.find_element(By.ID, "threshold")
    field.clear()
    field.send_keys(str(threshold))
    browser.find_element(By.ID, "file").send_keys(str(path))
    _wait_for_state(browser, "done")

    canvas = browser.find_element(By.ID, "canvas")
    drawn = json.loads(canvas.get_attribute("data-boxes"))
    np.testing.assert_allclose(drawn, expected["boxes"], atol=1e-4)
    shown = json.loads(browser.find_element(By.ID, "json").text)
    assert shown["boxes"] == expected["boxes"] and shown["names"] == expected["names"]
    size = browser.execute_script("const c = arguments[0]; return [c.width, c.height]", canvas)
    assert size == [120, 90]
    # The last box drawn keeps its stroke: the middle of its left edge has the class colour.
    x1, y1, _, y2 = (round(v) for v in expected["boxes"][-1])
    y = min(89, (y1 + y2) // 2)
    pixel = browser.execute_script(
        "return Array.from(arguments[0].getContext('2d').getImageData(arguments[1], arguments[2],"
        " 1, 1).data.slice(0, 3))",
        canvas,
        min(x1, 119),
        y,
    )
    assert pixel == COLOURS[expected["labels"][-1] % len(COLOURS)].tolist()

"""The web page in a real headless browser: Debian's chromium driven by selenium through
chromedriver, against the shared `app_server` (a `--quick` run under a temporary runs root).

Run locally (slow test): `apt-get install chromium chromium-driver` (Debian/Ubuntu), then
`python -m pytest -n 0 -m slow tests/test_app_browser.py -s` (`-s` shows the Run times; `-n 0`
runs it in this process, whose output `-s` shows, instead of an xdist worker).
"""

import os
import shutil
import time

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,2200")


@pytest.fixture
def browser(tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {CHROMIUM} or {CHROMEDRIVER} is missing")
        pytest.skip(f"no browser: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "profile"
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _value(driver, elem_id):
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
    return field.get_attribute("value") or ""


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def _set_number(driver, elem_id, value):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.TAB)


def _gif_src(driver):
    from selenium.webdriver.common.by import By

    imgs = driver.find_elements(By.CSS_SELECTOR, "#gif_after img[src]")
    return imgs[0].get_attribute("src") if imgs else None


def _click_run_and_wait(driver, wait):
    """Click Run; seconds until a new animation (each Run writes a new GIF) and a return show."""
    from selenium.webdriver.common.by import By

    previous = _gif_src(driver)
    t0 = time.perf_counter()
    driver.find_element(By.CSS_SELECTOR, "#run_button").click()
    wait.until(lambda d: _gif_src(d) not in (None, previous) and _value(d, "try_return"))
    return time.perf_counter() - t0


@pytest.mark.slow
def test_page_runs_a_task_in_a_real_browser(app_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 300, poll_frequency=0.25)
    browser.get(app_server.url)
    # the newest run is chosen on load and its methods fill the method dropdown
    wait.until(lambda d: "quick" in _value(d, "run") and "maml_adapted" in _value(d, "method"))
    _set_number(browser, "length", 0.9)
    wait.until(lambda d: _number(_value(d, "length")) == 0.9)
    clicked = time.perf_counter() - app_server.started
    first = _click_run_and_wait(browser, wait)
    status = _value(browser, "try_status")
    ret = float(_value(browser, "try_return"))
    assert 0 <= ret <= 500, ret
    assert "maml_adapted" in status and "before" in status
    gif = browser.find_element(By.CSS_SELECTOR, "#gif_after img").get_attribute("src")
    assert gif and ".gif" in gif
    browser.save_screenshot(str(tmp_path / "page.png"))
    # a second Run of the same method on other physics, with 5 steps, reuses the compiled functions
    _set_number(browser, "masscart", 2.0)
    _set_number(browser, "steps", 5)
    wait.until(lambda d: _number(_value(d, "masscart")) == 2.0 and _number(_value(d, "steps")) == 5)
    second = _click_run_and_wait(browser, wait)
    assert 0 <= float(_value(browser, "try_return")) <= 500
    browser.save_screenshot(str(tmp_path / "page2.png"))
    assert os.path.getsize(tmp_path / "page.png") > 10_000
    assert browser.find_elements(By.XPATH, "//*[@id='try_returns']//*[contains(text(), 'after 5 MAML inner steps')]")
    print(f"\nbrowser: first Run {first:.1f} s (clicked {clicked:.1f} s after the page was built), second Run "
          f"{second:.1f} s (other physics, 5 steps instead of 3; click to GIF shown; load average "
          f"{os.getloadavg()[0]:.1f}); screenshots in {tmp_path}")

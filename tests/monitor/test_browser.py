"""The monitor page in a real headless browser (Debian's chromium, driven by chromedriver)
against a live simulated run: it renders, its counters follow the run, and a channel the
simulated array kills is marked dead within seconds.

`make browser` installs chromium; without it this test fails, it does not skip.
PHOSPHENE_MONITOR_SCREENSHOT=docs/img/monitor.png keeps the test's screenshot there.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KILLED = 40  # a channel alive at calibration (the tiny bundle's reference)


@pytest.fixture
def browser(tmp_path):
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), \
        "chromium and chromium-driver are missing: `make browser` installs them"
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1050", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.1)


# The page redraws every second: read it with one script each time, never through element
# references that a redraw makes stale.
def _text(driver, element_id: str) -> str:
    return driver.execute_script("const e = document.getElementById(arguments[0]); "
                                 "return e ? e.textContent : '';", element_id)


def _count(driver, element_id: str) -> int | None:
    text = _text(driver, element_id).replace(",", "")
    return int(text) if text.isdigit() else None


def _state(driver, channel: int) -> str | None:
    return driver.execute_script("const e = document.querySelector(`[data-channel=\"${arguments[0]}\"]`); "
                                 "return e ? e.getAttribute('data-state') : null;", channel)


def _channels_in(driver, state: str) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll(`[data-state=\"${arguments[0]}\"]`)]"
                                 ".map(e => e.getAttribute('data-channel'));", state)


def test_page_follows_a_live_run_and_marks_a_killed_channel_dead(browser, live_run, monitor_bundle_path,
                                                                  tmp_path):
    with live_run(monitor_bundle_path, tmp_path / "decisions.jsonl", kill_channel=KILLED,
                  drop_frames_p=0.01) as (server, source, runtime):
        browser.get(server.url)
        assert browser.title == "phosphene monitor"
        # live: the badge says so, decisions arrive, the array is assessed healthy
        _until(lambda: _text(browser, "badge") == "live", 10, "the page polls the run")
        # a few trials first, so that the screenshot shows P(perceived) over some time
        first = _until(lambda: (n := _count(browser, "c-decisions")) and n >= 4 and n, 20, "decisions on the page")
        _until(lambda: _state(browser, KILLED) == "ok", 10, f"channel {KILLED} assessed ok")
        assert browser.execute_script("return document.querySelectorAll('[data-channel]').length") == 96
        assert browser.execute_script("return !!document.getElementById('threshold') "
                                      "&& !!document.getElementById('budget')")

        t_kill = time.monotonic()
        source.kill.set()
        _until(lambda: _state(browser, KILLED) == "dead", 10, f"channel {KILLED} marked dead")
        marked_after_s = time.monotonic() - t_kill
        assert "1 dead (electrode 41)" in _text(browser, "health-text")
        # the counters follow the run: more decisions now, and never ahead of the runtime
        later = _until(lambda: (n := _count(browser, "c-decisions")) and n > first and n, 10,
                       "the decision count rises")
        with urllib.request.urlopen(server.url + "status", timeout=5) as r:
            status = json.load(r)
        assert later <= status["decisions"] <= runtime.counters.decisions
        lost = _count(browser, "c-frames-lost")
        assert lost is not None and lost <= status["frames_lost"]
        # the other channels stay healthy
        assert _channels_in(browser, "dead") == [str(KILLED)]
        png = browser.get_screenshot_as_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    (tmp_path / "monitor.png").write_bytes(png)
    keep = os.environ.get("PHOSPHENE_MONITOR_SCREENSHOT")
    if keep:
        shutil.copyfile(tmp_path / "monitor.png", keep)
    print(f"channel {KILLED} marked dead {marked_after_s:.1f} s after the kill")
    assert marked_after_s < 10

"""The status page in a real browser: Chromium (the distribution's, driven by Selenium) on the lab's client
network opens the page on both nodes, reads what a person would read, then watches the survivor's page
through a crash of the primary, without a reload. Screenshots before and after go to the test's
directory (printed)."""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from standby.lab import Lab, netns
from standby.lab.pair import start_pair
from tests.packages import need

T = TypeVar("T")
SEEN_WITHIN_S = 20  # generous: the page refreshes every second; this only bounds a failing test


class Browser:
    """One Chromium, driven from a thread that lives in the client's network namespace: the driver
    process it starts and every request to it are in that namespace too."""

    def __init__(self, ns: str) -> None:
        self.pool = ThreadPoolExecutor(1, initializer=_enter_netns, initargs=(ns,))
        self.driver: Any = None

    def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        return self.pool.submit(fn, *args).result()

    def start(self) -> None:
        chromium = need("chromium", "chromium", "chromium-driver")
        driver = need("chromedriver", "chromium", "chromium-driver")
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError:
            pytest.skip("selenium is not installed: pip install -e '.[test]'")

        def launch() -> Any:
            opts = webdriver.ChromeOptions()
            opts.binary_location = chromium
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--window-size=1280,1200"):
                opts.add_argument(arg)
            opts.accept_insecure_certs = True  # the lab's own CA; what the page shows is under test, not TLS
            return webdriver.Chrome(options=opts, service=Service(driver))

        self.driver = self(launch)

    def stop(self) -> None:
        if self.driver is not None:
            self(self.driver.quit)
        self.pool.shutdown(wait=True)


def _enter_netns(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns.NETNS_DIR / ns, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET: this thread only
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
    finally:
        os.close(fd)


@pytest.fixture
def browser(lab: Lab) -> Iterator[Browser]:
    b = Browser(lab.netns("client"))
    try:
        b.start()
        yield b
    finally:
        b.stop()


def text_of(driver: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException

    try:
        return str(driver.find_element("css selector", css).text)
    except NoSuchElementException:
        return ""


def wait_until(b: Browser, tab: str, what: str, check: Callable[[Any], bool]) -> None:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def run() -> None:
        b.driver.switch_to.window(tab)

        def ok(d: Any) -> bool:
            try:
                return check(d)
            except StaleElementReferenceException:  # redrawn while read: read again
                return False

        try:
            WebDriverWait(b.driver, SEEN_WITHIN_S, poll_frequency=0.25).until(ok)
        except TimeoutException:
            body = text_of(b.driver, "body")
            raise AssertionError(f"the page on {tab} never showed {what}; it shows:\n{body[:3000]}") from None

    b(run)


def timeline_rows(d: Any) -> list[str]:
    return [str(r.text) for r in d.find_elements("css selector", "#timeline tbody tr")]


def test_status_page_shows_the_pair_and_a_failover_on_the_survivor(lab: Lab, browser: Browser, tmp_path: Path) -> None:
    start_pair(lab)
    cfg = lab.config()
    scheme = "https" if cfg.tls else "http"
    urls = {n: f"{scheme}://{lab.node(n).public.ip}:{cfg.api.port}/ui/" for n in ("alpha", "beta")}

    def open_tabs() -> dict[str, str]:
        d = browser.driver
        d.get(urls["alpha"])
        tabs = {"alpha": d.current_window_handle}
        d.switch_to.new_window("tab")
        d.get(urls["beta"])
        tabs["beta"] = d.current_window_handle
        return tabs

    tabs = browser(open_tabs)
    for node, tab in tabs.items():
        # What a person reads: the primary named, each role, the lag, the history of both nodes.
        wait_until(browser, tab, "alpha primary and beta standby, from " + node,
                   lambda d: text_of(d, "#role-alpha").lower() == "primary" and text_of(d, "#role-beta").lower() == "standby")
        wait_until(browser, tab, "the lag in bytes and seconds",
                   lambda d: re.fullmatch(r"[0-9.]+ [kMGT]?B, [0-9.]+ (s|min)", text_of(d, "#fact-lag")) is not None)
        wait_until(browser, tab, "both nodes' agents starting in the timeline",
                   lambda d: {"alpha", "beta"} <= {r.split()[2] for r in timeline_rows(d) if "agent_started" in r})
        facts = browser(lambda: {k: text_of(browser.driver, f"#fact-{k}") for k in ("primary", "risk", "holders")})
        assert facts["primary"] == "alpha" and facts["holders"] == "alpha", facts
        assert facts["risk"].startswith("nothing"), facts
        wait_until(browser, tab, "no banner (nothing at risk)", lambda d: text_of(d, "#banners") == "")
        browser(lambda t=tab, n=node: (browser.driver.switch_to.window(t),
                                       browser.driver.save_screenshot(str(tmp_path / f"before-{n}.png"))))

    lab.crash("alpha")

    # The survivor's page, never reloaded: beta primary, the failover and its reason, alpha unreachable.
    wait_until(browser, tabs["beta"], "beta as the new primary", lambda d: text_of(d, "#role-beta").lower() == "primary")
    wait_until(browser, tabs["beta"], "the promotion with its reason in the timeline",
               lambda d: any("beta" in r and "promote" in r and "peer_dead" in r for r in timeline_rows(d)))
    wait_until(browser, tabs["beta"], "alpha unreachable",
               lambda d: text_of(d, "#role-alpha").lower() == "unreachable" and "alpha is unreachable" in text_of(d, "#banners"))
    last = browser(lambda: text_of(browser.driver, "#last-failover"))
    assert "beta" in last and "peer_dead" in last, last
    browser(lambda: browser.driver.save_screenshot(str(tmp_path / "after-beta.png")))
    print(f"\nscreenshots: {sorted(str(p) for p in tmp_path.glob('*.png'))}")

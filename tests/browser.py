"""A real browser for tests: the distribution's Chromium driven by Selenium, installed when missing
(`apt-get install chromium chromium-driver`), the test skipped with the reason if that fails."""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from standby.lab.netns import NETNS_DIR
from tests.packages import need

T = TypeVar("T")
SEEN_WITHIN_S = 20  # generous: the page refreshes every second; this only bounds a failing test
# A page load that has not finished by then fails with chromedriver's own account of it (below), well before
# Selenium's client gives up on the driver (120 s) with nothing to say.
PAGE_LOAD_S = 30
LOG_TAIL_LINES = 60


class Browser:
    """One headless Chromium, driven from a single thread. With ``netns`` that thread lives in the lab's
    namespace, so the driver process it starts and every request to it are there too."""

    def __init__(self, netns: str | None = None) -> None:
        self.pool = ThreadPoolExecutor(1, initializer=_enter_netns if netns else None, initargs=(netns,) if netns else ())
        self.driver: Any = None
        # Everything the browser writes lives here and goes with stop(): its profile, its temporary files
        # (Chromium makes its singleton socket's directory under TMPDIR and never removes it) and
        # chromedriver's verbose log, which says what the browser was doing when a step failed. Directly in
        # the system's temporary directory: the socket's path under it must fit a Unix socket's 108 bytes.
        self.home = tempfile.mkdtemp(prefix="browser-")
        self.log = os.path.join(self.home, "chromedriver.log")

    def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return self.pool.submit(fn, *args).result()
        except Exception as e:  # passed on, with what the browser was doing
            e.add_note(f"--- chromedriver log, last {LOG_TAIL_LINES} lines ---\n{self.log_tail()}")
            raise

    def log_tail(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-LOG_TAIL_LINES:])
        except OSError as e:
            return f"(unreadable: {e})"

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
                        "--window-size=1280,1200", f"--user-data-dir={self.home}/profile"):
                opts.add_argument(arg)
            opts.accept_insecure_certs = True  # the lab's own CA; what the page shows is under test, not TLS
            env = {**os.environ, "TMPDIR": self.home}
            d = webdriver.Chrome(options=opts, service=Service(driver, service_args=["--verbose"],
                                                                log_output=self.log, env=env))
            d.set_page_load_timeout(PAGE_LOAD_S)
            return d

        self.driver = self(launch)

    def stop(self) -> None:
        try:
            if self.driver is not None:
                self(self.driver.quit)
            self.pool.shutdown(wait=True)
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    def text(self, css: str) -> str:
        return self(text_of, self.driver, css)

    def wait(self, tab: str | None, what: str, check: Callable[[Any], bool]) -> None:
        """Until ``check(driver)`` holds on ``tab`` (the current one if None); fails with what the page shows."""
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        def run() -> None:
            if tab is not None:
                self.driver.switch_to.window(tab)

            def ok(d: Any) -> bool:
                try:
                    return check(d)
                except StaleElementReferenceException:  # redrawn while read: read again
                    return False

            try:
                WebDriverWait(self.driver, SEEN_WITHIN_S, poll_frequency=0.25).until(ok)
            except TimeoutException:
                body = text_of(self.driver, "body")
                raise AssertionError(f"the page never showed {what}; it shows:\n{body[:3000]}") from None

        self(run)


def _enter_netns(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET: this thread only
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
    finally:
        os.close(fd)


def text_of(driver: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException

    try:
        return str(driver.find_element("css selector", css).text)
    except NoSuchElementException:
        return ""


def timeline_rows(d: Any) -> list[str]:
    return [str(r.text) for r in d.find_elements("css selector", "#timeline tbody tr")]


def browser_in(netns: str | None) -> Iterator[Browser]:
    """For a fixture: a started browser, stopped afterwards whatever happened."""
    b = Browser(netns)
    try:
        b.start()
        yield b
    finally:
        b.stop()

"""The status page in a real browser: Chromium (the distribution's, driven by Selenium) on the lab's client
network opens the page on both nodes, reads what a person would read, then watches the survivor's page
through a crash of the primary, without a reload. Screenshots before and after go to the test's
directory (printed)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from standby.lab import Lab
from standby.lab.pair import start_pair
from tests.browser import Browser, browser_in, text_of, timeline_rows

# Alone (tests/gate.py): Chromium's start and rendering take the machine's cores for seconds at a time.
pytestmark = pytest.mark.alone


@pytest.fixture
def browser(lab: Lab) -> Iterator[Browser]:
    yield from browser_in(lab.netns("client"))


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
        browser.wait(tab, f"alpha primary and beta standby (page on {node})",
                     lambda d: text_of(d, "#role-alpha").lower() == "primary" and text_of(d, "#role-beta").lower() == "standby")
        browser.wait(tab, "the lag in bytes and seconds",
                     lambda d: re.fullmatch(r"[0-9.]+ [kMGT]?B, [0-9.]+ (s|min)", text_of(d, "#fact-lag")) is not None)
        browser.wait(tab, "both nodes' agents starting in the timeline",
                     lambda d: {"alpha", "beta"} <= {r.split()[2] for r in timeline_rows(d) if "agent_started" in r})
        browser.wait(tab, "no banner (nothing at risk)", lambda d: text_of(d, "#banners") == "")
        facts = {k: browser.text(f"#fact-{k}") for k in ("primary", "risk", "holders")}
        assert facts["primary"] == "alpha" and facts["holders"] == "alpha", facts
        assert facts["risk"].startswith("nothing"), facts
        browser(browser.driver.save_screenshot, str(tmp_path / f"before-{node}.png"))

    lab.crash("alpha")

    # The survivor's page, never reloaded: beta primary, the failover and its reason, alpha unreachable.
    beta = tabs["beta"]
    browser.wait(beta, "beta as the new primary", lambda d: text_of(d, "#role-beta").lower() == "primary")
    browser.wait(beta, "the promotion with its reason in the timeline",
                 lambda d: any("beta" in r and "promote" in r and "peer_dead" in r for r in timeline_rows(d)))
    browser.wait(beta, "alpha unreachable",
                 lambda d: text_of(d, "#role-alpha").lower() == "unreachable"
                 and "alpha is unreachable" in text_of(d, "#banners"))
    last = browser.text("#last-failover")
    assert "beta" in last and "peer_dead" in last, last
    browser(browser.driver.save_screenshot, str(tmp_path / "after-beta.png"))
    print(f"\nscreenshots: {sorted(str(p) for p in tmp_path.glob('*.png'))}")

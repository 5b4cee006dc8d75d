"""Fixtures for the browser tests: one `make lab` server and one Chromium for the whole run."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import sync_playwright

from lab import ARTIFACTS, chromium_path, copy_course, is_loopback, start_lab


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    root = copy_course(tmp_path_factory.mktemp("course"))
    server = start_lab(root)
    yield server
    server.stop()
    if ARTIFACTS.exists():
        shutil.copy(server.log_path, ARTIFACTS / "lab.log")


@pytest.fixture(scope="session")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path())
        yield chromium
        chromium.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so a fixture can tell that its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser, lab, request):
    """A fresh browser page; after the test, no request may have left this machine."""
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda request: outside.append(request.url) if not is_loopback(request.url) else None)
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:  # what the page showed when the test failed
        failures = ARTIFACTS / "failures"
        failures.mkdir(parents=True, exist_ok=True)
        name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in request.node.name)
        page.screenshot(path=str(failures / f"{name}.png"), full_page=True)
    context.close()
    lab.shut_down_kernels()
    assert not outside, f"the page made requests beyond this machine: {outside[:5]}"

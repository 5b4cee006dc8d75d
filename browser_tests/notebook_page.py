"""What a person does with a notebook in JupyterLab, done with Playwright: open, Run All, save, look."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
from playwright.sync_api import Page

NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"
RUN_ALL_START_S = 30  # the first cell starts within a second or two of Run All

# Per code cell: its prompt ("[ ]:", "[*]:" or "[12]:"). Read from the page, as a person would.
_PROMPTS_JS = f"""() => Array.from(document.querySelectorAll(
    '{NOTEBOOK} .jp-CodeCell .jp-InputArea-prompt')).map(p => p.textContent.trim())"""


def open_notebook(page: Page, url: str, timeout_s: float = 120) -> None:
    """Open a notebook and wait until its kernel is idle."""
    page.goto(url)
    page.wait_for_selector(f"{NOTEBOOK} .jp-Cell", timeout=timeout_s * 1000)
    page.wait_for_selector(
        f'{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=timeout_s * 1000
    )


def open_menu(page: Page, menu: str) -> None:
    """Click a menu in the menu bar (File, Run, Nbgrader, ...)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()


def menu_command(page: Page, menu: str, command: str) -> None:
    """Click a menu in the menu bar, then one of its items (by JupyterLab command id)."""
    open_menu(page, menu)
    page.locator(f'.lm-Menu-item[data-command="{command}"]').first.click()


def fail_on_dialog(page: Page) -> None:
    """A modal dialog (kernel died, file changed, ...) is something a person would have to answer."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        raise AssertionError(f"JupyterLab shows a dialog: {dialog.first.inner_text()[:300]!r}")


def run_all(page: Page, timeout_s: float) -> list[str]:
    """Run > Run All Cells, then wait until nothing is queued or running; returns the prompts."""
    fail_on_dialog(page)
    menu_command(page, "Run", "runmenu:run-all")
    clicked_at = time.monotonic()
    deadline = clicked_at + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        fail_on_dialog(page)
        prompts = page.evaluate(_PROMPTS_JS)
        started = any(p not in ("[ ]:", "") for p in prompts)
        if not started and time.monotonic() - clicked_at > RUN_ALL_START_S:
            # Seen once in CI: the click landed while the menu was still opening, and nothing ran.
            # A person would click Run All again; so do we (running nothing twice is harmless).
            page.keyboard.press("Escape")
            menu_command(page, "Run", "runmenu:run-all")
            clicked_at = time.monotonic()
            continue
        busy = any("*" in p for p in prompts)
        idle = page.locator(f'{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status="idle"]').count() > 0
        if started and not busy and idle:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2:  # idle twice in a row, two seconds apart
                return prompts
        else:
            quiet_since = None
        time.sleep(1)
    raise TimeoutError(f"Run All did not finish in {timeout_s:.0f} s; prompts: {page.evaluate(_PROMPTS_JS)}")


def save(page: Page, path: Path, timeout_s: float = 30) -> nbformat.NotebookNode:
    """File > Save Notebook; returns the notebook as written to disk."""
    before = path.stat().st_mtime_ns
    fail_on_dialog(page)
    menu_command(page, "File", "docmanager:save")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.stat().st_mtime_ns != before:
            time.sleep(0.5)  # let the write finish
            return nbformat.read(path, as_version=4)
        time.sleep(0.25)
    raise TimeoutError(f"{path.name} was not saved within {timeout_s:.0f} s")


def broken_images(page: Page) -> list[str]:
    """Output images that did not decode (naturalWidth 0) or are not complete."""
    return page.evaluate(f"""() => Array.from(document.querySelectorAll('{NOTEBOOK} .jp-OutputArea-output img'))
        .filter(img => !img.complete || img.naturalWidth === 0).map(img => img.src.slice(0, 60))""")


def canvases_with_pixels(page: Page) -> list[int]:
    """For each canvas in the outputs, how many of its pixels are not transparent."""
    return page.evaluate(f"""() => Array.from(document.querySelectorAll('{NOTEBOOK} .jp-OutputArea-output canvas'))
        .map(c => {{
            const ctx = c.getContext('2d');
            if (!ctx || c.width === 0 || c.height === 0) return 0;
            const data = ctx.getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
            return n;
        }})""")


def screenshot_figures(page: Page, out_dir: Path, limit: int = 40) -> list[Path]:
    """Screenshots of every figure (images and circuitsvis views) in the outputs, in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    figures = page.locator(
        f"{NOTEBOOK} .jp-OutputArea-output img, {NOTEBOOK} .jp-OutputArea-output:has(canvas)"
    )
    for i in range(min(figures.count(), limit)):
        figure = figures.nth(i)
        figure.scroll_into_view_if_needed()
        path = out_dir / f"figure-{i:02d}.png"
        figure.screenshot(path=str(path))
        shots.append(path)
    return shots

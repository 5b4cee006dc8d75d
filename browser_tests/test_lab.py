"""The course as people meet it: `make lab`, then JupyterLab in Chromium.

Run with `make test-browser`. Each test does what a student or an instructor does (open a
notebook, Run All, look at the figures, open the formgrader, type in a terminal) and checks what
they would see. Screenshots of every figure go to artifacts/browser/.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from lab import ARTIFACTS, REPO
from notebook_page import (
    NOTEBOOK,
    broken_images,
    canvases_with_pixels,
    open_menu,
    open_notebook,
    run_all,
    save,
    screenshot_figures,
)

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1", "::1", "localhost"])]

ASSIGNMENT = "mech_interp"
NOTEBOOKS = sorted(p.name for p in (REPO / "solutions" / ASSIGNMENT).glob("*.ipynb"))
RUN_ALL_TIMEOUT_S = 420  # the slowest notebook runs in about 2 minutes on 2 cores
# Notebooks whose circuitsvis views must draw (their canvases have pixels).
CIRCUITSVIS_NOTEBOOKS = {"03_residual_stream.ipynb"}


def _is_test_cell(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("grade"))


def _errors(cell) -> list[str]:
    return [f"{o.ename}: {o.evalue}"[:200] for o in cell.get("outputs", []) if o.output_type == "error"]


def _nbgrader_scores(nb) -> dict[str, tuple[float, float]]:
    """grade_id -> (points, max points), by nbgrader's own rule applied to the cells as run here."""
    from nbgrader.utils import determine_grade

    return {
        c.metadata.nbgrader.grade_id: determine_grade(c)
        for c in nb.cells
        if c.cell_type == "code" and _is_test_cell(c)
    }


def _figure_outputs_without_image(nb) -> list[str]:
    """matplotlib figures that reached the notebook as text ('<Figure size ...>') and not as an image."""
    bad = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if data.get("text/plain", "").startswith("<Figure size") and "image/png" not in data:
                bad.append(cell.source[:60])
    return bad


def _run_in_lab(page, lab, folder: str, name: str):
    """Open folder/name in JupyterLab, Run All, save; returns (prompts, saved notebook)."""
    path = lab.root / folder / ASSIGNMENT / name
    open_notebook(page, lab.lab_url(f"tree/{folder}/{ASSIGNMENT}/{name}"))
    started = time.monotonic()
    prompts = run_all(page, RUN_ALL_TIMEOUT_S)
    print(f"{folder}/{name}: Run All took {time.monotonic() - started:.0f} s")
    return prompts, save(page, path)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_released_notebook_runs_all_to_the_last_cell(page, lab, name):
    """A student's first Run All: every cell runs; only the unsolved exercises' tests fail."""
    prompts, nb = _run_in_lab(page, lab, "notebooks", name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(p not in ("[ ]:", "[*]:", "") for p in prompts), f"Run All stopped early: {prompts}"
    assert all(c.execution_count for c in code), "some cells never ran"
    crashed = {c.source[:60]: _errors(c) for c in code if _errors(c) and not _is_test_cell(c)}
    assert not crashed, f"cells outside the tests failed: {crashed}"
    visible_tests = [c for c in code if _is_test_cell(c) and not c.source.lstrip().startswith("#")]
    failed_tests = [c for c in visible_tests if _errors(c)]
    assert visible_tests and failed_tests == visible_tests, "every test of the release should fail (nothing is solved)"
    scores = _nbgrader_scores(nb)
    assert all(scores[c.metadata.nbgrader.grade_id][0] == 0 for c in visible_tests), scores
    for cell in failed_tests:
        text = "\n".join(line for o in cell.outputs if o.output_type == "error" for line in o.traceback)
        assert "_trust.py" not in text, "a failed check should print its message, not the checker's stack"
    # What a student sees under the first test: the exercise, the check's one-line message.
    first = nb.cells.index(failed_tests[0])
    cells = page.locator(f"{NOTEBOOK} .jp-Cell")
    cells.nth(first).scroll_into_view_if_needed()
    shot = ARTIFACTS / "notebooks" / Path(name).stem / "first-failed-check.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    cells.nth(first).screenshot(path=str(shot))
    assert not _figure_outputs_without_image(nb)
    assert not broken_images(page)
    screenshot_figures(page, ARTIFACTS / "notebooks" / Path(name).stem)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_solution_notebook_runs_to_the_end_without_errors(page, lab, name):
    """The instructor's version: every cell runs, no error output, every check passes."""
    prompts, nb = _run_in_lab(page, lab, "solutions", name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), f"Run All stopped early: {prompts}"
    errors = {c.source[:60]: _errors(c) for c in code if _errors(c)}
    assert not errors, f"error outputs: {errors}"
    # The solution notebook holds the hidden tests too, so this is every test the autograder runs,
    # scored by nbgrader's rule (an error or any stderr output scores zero).
    scores = _nbgrader_scores(nb)
    assert scores and all(points == full for points, full in scores.values()), scores
    stderr = [o.text for c in code for o in c.get("outputs", []) if o.output_type == "stream" and o.name == "stderr"]
    assert not any("Loading weights" in text for text in stderr), "a progress bar leaked into the outputs"
    assert not _figure_outputs_without_image(nb)
    assert not broken_images(page)
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    shots = screenshot_figures(page, ARTIFACTS / "solutions" / Path(name).stem)
    assert len(shots) >= min(images, 40), "every figure should be on the page as an image"
    if name in CIRCUITSVIS_NOTEBOOKS:
        pixels = canvases_with_pixels(page)
        assert pixels and all(n > 100 for n in pixels), f"circuitsvis canvases are empty: {pixels}"


def test_formgrader_lists_the_assignment(page, lab):
    """The instructor's Nbgrader > Formgrader page works and shows the course's assignment."""
    page.goto(lab.url("/formgrader"))
    page.locator("table td", has_text=ASSIGNMENT).first.wait_for(timeout=60_000)
    assert "encountered an error" not in page.inner_text("body")
    page.screenshot(path=str(ARTIFACTS / "formgrader.png"))


def test_assignment_list_finds_the_exchange(page, lab):
    """The student's Nbgrader > Assignment List shows no exchange error (a course-local exchange)."""
    page.goto(lab.lab_url("tree/notebooks"))
    page.wait_for_selector(".jp-NotebookPanel, .jp-DirListing", timeout=60_000)
    open_menu(page, "Nbgrader")
    page.locator(".lm-Menu-itemLabel", has_text="Assignment List").first.click()
    time.sleep(5)  # the list asks the server, which reads the exchange
    body = page.inner_text("body")
    assert "exchange directory does not exist" not in body, body[:500]
    page.screenshot(path=str(ARTIFACTS / "assignment_list.png"))


def test_a_lab_terminal_finds_the_course_command(page, lab):
    """In a Lab terminal, the README's `course` command is found (the venv is on the server's PATH)."""
    page.goto(lab.lab_url(""))
    page.wait_for_selector(".jp-DirListing", timeout=60_000)
    open_menu(page, "File")
    page.locator(".lm-Menu-itemLabel", has_text="New").first.hover()
    page.locator('.lm-Menu-item[data-command="terminal:create-new"]').first.click()
    page.wait_for_selector(".jp-Terminal .xterm", timeout=60_000)
    time.sleep(3)  # the shell starts and prints its prompt
    page.locator(".jp-Terminal .xterm").first.click()
    out = lab.root / "terminal_check.txt"
    page.keyboard.type(f"course --help > {out} 2>&1\n")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.read_text()):
        time.sleep(0.5)
    page.screenshot(path=str(ARTIFACTS / "terminal.png"))
    assert out.exists(), "the terminal did not run the command"
    assert "usage: course" in out.read_text(), out.read_text()

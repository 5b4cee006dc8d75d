"""What a student gets back: one HTML page per notebook, with results and messages, no hidden tests.

nbgrader's feedback is the whole graded notebook, so hidden tests are shown to the student
(jupyter/nbgrader #917, #1363). This page shows, per test: its points, whether it passed, and
for visible tests what the checker said (its message, and what the test printed). For hidden tests
it shows only pass or fail: anything printed there could carry the hidden test's source (a
student's function can read its caller's code and raise it as a message). It never shows the
source of any test cell. Everything taken from the run is escaped: a submission cannot put markup or
script into its own feedback.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import nbformat

from course_lib.grading.assemble import grade_id
from course_lib.grading.score import NotebookGrade

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MESSAGE_LIMIT = 4000  # characters of one test's message shown

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }
table { border-collapse: collapse; width: 100%; } td, th { padding: .4rem .6rem; border-bottom: 1px solid #ddd;
vertical-align: top; text-align: left; } .pass { color: #1a7f37; } .fail { color: #b42318; }
pre { white-space: pre-wrap; background: #f6f8fa; padding: .5rem; margin: .3rem 0 0; font-size: .85rem; }
.notes { background: #fff8e6; padding: .6rem 1rem; border-left: 4px solid #e0a800; }
"""


def _clean(text: str) -> str:
    return _ANSI.sub("", str(text))


def _test_messages(executed: nbformat.NotebookNode | None) -> dict[str, tuple[str, str]]:
    """grade id -> (what the test printed, the error message) from the graded run."""
    found: dict[str, tuple[str, str]] = {}
    if executed is None:
        return found
    for cell in executed.cells:
        gid = grade_id(cell)
        if not gid or cell.cell_type != "code":
            continue
        printed, error = [], []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                printed.append(out.get("text", ""))
            elif out.get("output_type") == "error":
                error.append(f"{out.get('ename', '')}: {out.get('evalue', '')}")
        found[gid] = (_clean("".join(printed))[:MESSAGE_LIMIT], _clean("\n".join(error))[:MESSAGE_LIMIT])
    return found


def feedback_html(grade: NotebookGrade, executed: nbformat.NotebookNode | None, assignment: str) -> str:
    """The feedback page for one student's notebook."""
    e = html.escape
    messages = _test_messages(executed)
    rows = []
    for t in grade.tests:
        passed = t.points >= t.max_points
        mark = '<span class="pass">passed</span>' if passed else '<span class="fail">failed</span>'
        printed, error = messages.get(t.test, ("", ""))
        detail = ""
        if not passed and t.hidden:
            # Nothing the run printed: a student's function can raise its calling cell's source.
            detail += ("<div>The hidden test failed. Its visible twin above checks the same function on "
                       "other cases: make that pass first, then run <code>course check</code>.</div>")
        elif not passed:
            detail += f"<div>{e(t.reason)}</div>"
            if error:
                detail += f"<pre>{e(error)}</pre>"
        if printed and not t.hidden:
            detail += f"<pre>{e(printed)}</pre>"
        kind = "hidden test (its code is not shown)" if t.hidden else "test"
        rows.append(f"<tr><td><code>{e(t.test)}</code><br><small>{kind}</small></td>"
                    f"<td>{t.points:g} / {t.max_points:g}</td><td>{mark}{detail}</td></tr>")
    notes = ""
    shown_notes = [n for n in grade.notes if "stub" in n or "edited" in n or "deleted" in n or "appears" in n
                   or "kernelspec" in n or "above the import cell" in n]
    if grade.problem or shown_notes:
        items = "".join(f"<li>{e(n)}</li>" for n in ([grade.problem] if grade.problem else []) + shown_notes)
        notes = f'<div class="notes"><b>About your submission</b><ul>{items}</ul></div>'
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(grade.notebook)}: feedback</title><style>{_STYLE}</style></head>
<body><h1>{e(grade.notebook)}</h1>
<p>{e(assignment)} · {e(grade.student)} · <b>{grade.points:g} / {grade.max_points:g} points</b></p>
{notes}
<table><tr><th>test</th><th>points</th><th>result</th></tr>{''.join(rows)}</table>
<p><small>Each test calls a checker on your functions. A hidden test runs the same checker on other
cases; its code stays with the instructor. Run <code>course check NOTEBOOK</code> to grade your own
notebook the same way before you submit.</small></p>
</body></html>
"""


def write_feedback(root: Path, assignment: str, grade: NotebookGrade) -> Path:
    """feedback/<student>/<assignment>/<notebook>.html for one graded notebook."""
    run = Path(root) / "autograded" / grade.student / assignment / f"{grade.notebook}.ipynb"
    try:
        executed = nbformat.read(run, as_version=4) if run.exists() else None
    except Exception:
        executed = None
    out = Path(root) / "feedback" / grade.student / assignment / f"{grade.notebook}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(feedback_html(grade, executed, assignment))
    return out

"""The instructor's report: how the class did per exercise, who needs a human look, how long grading took."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from course_lib.grading.gradebook import needs_a_look
from course_lib.grading.score import NotebookGrade


def exercise_scores(grades: list[NotebookGrade]) -> dict[str, list[float]]:
    """'notebook: exercise' -> each student's fraction of its points (visible and hidden tests together)."""
    per: dict[tuple[str, str, str], list[float]] = {}
    for grade in grades:
        for t in grade.tests:
            exercise = t.test.removeprefix("test_").removesuffix("_hidden")
            per.setdefault((grade.notebook, exercise, grade.student), [0.0, 0.0])
            per[(grade.notebook, exercise, grade.student)][0] += t.points
            per[(grade.notebook, exercise, grade.student)][1] += t.max_points
    scores: dict[str, list[float]] = {}
    for (notebook, exercise, _), (points, max_points) in sorted(per.items()):
        scores.setdefault(f"{notebook}: {exercise}", []).append(points / max_points if max_points else 0.0)
    return scores


def distribution_figure(grades: list[NotebookGrade]):
    """A matplotlib figure: per exercise, how many students scored 0, part, or all of its points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = exercise_scores(grades)
    names = list(scores)
    full = [sum(s >= 1 for s in v) for v in scores.values()]
    part = [sum(0 < s < 1 for s in v) for v in scores.values()]
    zero = [sum(s <= 0 for s in v) for v in scores.values()]
    fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(names), 3) + 1.2))
    y = range(len(names))
    ax.barh(y, full, color="#1a7f37", label="all points")
    ax.barh(y, part, left=full, color="#e0a800", label="some points")
    ax.barh(y, zero, left=[a + b for a, b in zip(full, part)], color="#b42318", label="no points")
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("students")
    ax.set_title("Points per exercise (visible and hidden tests together)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)  # beside the bars, never on them
    fig.tight_layout()
    return fig


def write_report(root: Path, assignment: str, grades: list[NotebookGrade], run_info: dict | None = None) -> Path:
    """grading/<assignment>/report.html and distribution.png; returns the HTML's path."""
    out_dir = Path(root) / "grading" / assignment
    out_dir.mkdir(parents=True, exist_ok=True)
    e = html.escape
    figure_html = "<p>No grades yet.</p>"
    if grades:
        fig = distribution_figure(grades)
        png = out_dir / "distribution.png"
        fig.savefig(png, dpi=110)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
        figure_html = f'<img alt="points per exercise" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
    students = sorted({g.student for g in grades})
    totals = {s: sum(g.points for g in grades if g.student == s) for s in students}
    max_total = max((sum(g.max_points for g in grades if g.student == s) for s in students), default=0)
    look = [(g, needs_a_look(g)) for g in grades]
    look = [(g, why) for g, why in look if why]
    look_rows = "".join(
        f"<tr><td>{e(g.student)}</td><td>{e(g.notebook)}</td><td>{g.points:g} / {g.max_points:g}</td>"
        f"<td><ul>{''.join(f'<li>{e(w)}</li>' for w in why)}</ul></td></tr>"
        for g, why in look
    )
    slow = sorted(grades, key=lambda g: -g.seconds)[:5]
    run_info = run_info or {}
    timing = ""
    if run_info:
        timing = (f"<p>Last run: {run_info.get('graded', 0)} notebooks in {run_info.get('wall_s', 0):.0f} s of wall "
                  f"time with {run_info.get('jobs', '?')} job(s) on {e(str(run_info.get('scheduler', 'this machine')))}; "
                  f"sandbox: {e(str(run_info.get('sandbox', '?')))}; kernels: {e(str(run_info.get('kernels', 'cold')))}.</p>")
    unmatched = run_info.get("unmatched") or []
    unmatched_html = ""
    if unmatched:
        items = "".join(f"<li><code>{e(u['path'])}</code>: {e(u['reason'])}</li>" for u in unmatched)
        unmatched_html = f"<h2>Files not graded ({len(unmatched)})</h2><ul>{items}</ul>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(assignment)}: grading report</title>
<style>body {{ font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; }}
td, th {{ padding: .3rem .6rem; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }}
table {{ border-collapse: collapse; }}</style></head><body>
<h1>{e(assignment)}: grading report</h1>
<p>{len(students)} students, {len(grades)} graded notebooks. Mean total {(sum(totals.values()) / len(totals)) if totals else 0:.1f} / {max_total:g}.</p>
{timing}
<h2>Points per exercise</h2>{figure_html}
<h2>Needs a human look ({len(look)})</h2>
<table><tr><th>student</th><th>notebook</th><th>points</th><th>why</th></tr>{look_rows}</table>
{unmatched_html}
<h2>Slowest notebooks</h2>
<ul>{''.join(f'<li>{e(g.student)} / {e(g.notebook)}: {g.seconds:.0f} s</li>' for g in slow)}</ul>
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    (out_dir / "report.json").write_text(json.dumps({
        "students": len(students), "graded_notebooks": len(grades), "run": run_info,
        "needs_a_look": [{"student": g.student, "notebook": g.notebook, "why": why} for g, why in look],
        "exercise_scores": exercise_scores(grades),
    }, indent=1))
    return path

"""How long grading a class takes: `course autograde` with 1 and 2 jobs, demonstrations skipped or
run, and nbgrader's own `nbgrader autograde`, side by side in one run (these machines are noisy).

    .venv/bin/python benchmarks/grading.py --students 2        # ~20 min on 2 cores
    .venv/bin/python benchmarks/grading.py --students 30       # the issue's class (hours)

Every student hands in all six notebooks: even-numbered students the solutions, odd-numbered ones
the solutions with their first answer reset to the stub (so runs that fail some tests are timed
too). Writes benchmarks/results/grading.md and checks on the way that skipping demonstrations
and running them give the same grades.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENT = "mech_interp"


def make_course(where: Path, students: int) -> Path:
    """A copy of the course with `students` submissions of every notebook."""
    from course_lib.grading import release

    for name in ("solutions", "notebooks"):
        shutil.copytree(ROOT / name, where / name)
    shutil.copy(ROOT / "nbgrader_config.py", where / "nbgrader_config.py")
    release(where)
    for path in sorted((where / "solutions" / ASSIGNMENT).glob("*.ipynb")):
        released = nbformat.read(where / "notebooks" / ASSIGNMENT / path.name, 4)
        stubs = {c.metadata.nbgrader.grade_id: c.source for c in released.cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
        for k in range(students):
            nb = nbformat.read(path, 4)
            if k % 2:
                first = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))
                first.source = stubs[first.metadata.nbgrader.grade_id]
            out = where / "submitted" / f"student{k:02d}" / ASSIGNMENT / path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out)
    return where


def grades(csv_path: Path) -> list[tuple]:
    with csv_path.open() as f:
        return [(r["student"], r["notebook"], r["test"], r["points"]) for r in csv.DictReader(f)]


def per_notebook_seconds(run) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for g in run.grades:
        out.setdefault(g.notebook, []).append(g.seconds)
    return {k: sum(v) / len(v) for k, v in sorted(out.items())}


def nbgrader_autograde_seconds(course: Path, student: str) -> dict[str, float]:
    """nbgrader's own autograde, one notebook at a time (its CLI, as an instructor runs it)."""
    times = {}
    nbgrader = Path(sys.executable).parent / "nbgrader"
    for path in sorted((course / "solutions" / ASSIGNMENT).glob("*.ipynb")):
        started = time.perf_counter()
        subprocess.run([str(nbgrader), "autograde", ASSIGNMENT, "--student", student, "--notebook", path.stem,
                        "--force", "--ExecutePreprocessor.timeout=900"], cwd=course, check=False,
                       capture_output=True, env={**os.environ, "PATH": f"{nbgrader.parent}:{os.environ['PATH']}"})
        times[path.stem] = time.perf_counter() - started
    return times


def main() -> None:
    from course_lib.grading.pipeline import autograde

    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        course = make_course(Path(tmp) / "course", args.students)
        runs = {}
        for label, jobs, skip in (("course autograde --jobs 1", 1, True), ("course autograde --jobs 2", 2, True),
                                  ("course autograde --jobs 2 --run-demos", 2, False)):
            started = time.perf_counter()
            run = autograde(course, course / "submitted", ASSIGNMENT, jobs=jobs, skip_demos=skip, progress=False)
            wall = time.perf_counter() - started
            runs[label] = (run, wall, grades(course / "grades.csv"))
            print(f"{label}: {wall:.0f} s", flush=True)
        same = len({tuple(g) for _, _, g in runs.values()}) == 1
        nbgrader_times = nbgrader_autograde_seconds(course, "student00")
    notebooks = per_notebook_seconds(runs["course autograde --jobs 2"][0])
    full = per_notebook_seconds(runs["course autograde --jobs 2 --run-demos"][0])
    n = args.students * len(notebooks)
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores: {args.students} students x "
             f"{len(notebooks)} notebooks = {n} graded notebooks per run.", "",
             "| run | wall time | per student | projected for 30 students |", "|---|---|---|---|"]
    for label, (run, wall, _) in runs.items():
        per_student = wall / args.students
        lines.append(f"| {label} | {wall:.0f} s | {per_student:.0f} s | {per_student * 30 / 60:.0f} min |")
    lines += ["", f"Grades identical across the three runs (demonstrations skipped or run): {same}.", "",
              "| notebook | nbgrader autograde (1 student, CLI) | course autograde, demos run | course autograde, demos skipped |",
              "|---|---|---|---|"]
    for name in notebooks:
        lines.append(f"| {name} | {nbgrader_times.get(name, float('nan')):.0f} s | {full[name]:.0f} s | {notebooks[name]:.0f} s |")
    lines.append("")
    lines.append("(per-notebook columns: seconds of one notebook's run, averaged over students; the two course "
                 "columns ran with 2 jobs at once, so each had about one core.)")
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "grading.md").write_text(table + "\n")
    if not same:
        raise SystemExit("grades differ between runs: see above")


if __name__ == "__main__":
    main()

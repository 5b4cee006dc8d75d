"""How long grading a class takes, side by side in one run (these machines are noisy):

* `course autograde` as it grades by default (kernels forked from a preloaded process, demos
  skipped) with 1 and 2 jobs, on `--students` students;
* on `--compare-students` students (fewer: these are slow): the same with cold kernels (a fresh
  process each), a plain run (cold kernels, every demonstration run: what nbgrader does), and
  nbgrader's own `nbgrader autograde` on one student.

    .venv/bin/python benchmarks/grading.py --students 30 --compare-students 2   # ~60 min on 2 cores
    .venv/bin/python benchmarks/grading.py --students 30 --jobs1-students 6 --compare-students 2  # ~30 min
    .venv/bin/python benchmarks/grading.py --students 2 --compare-students 2    # ~20 min

Every student hands in all six notebooks: even-numbered students the solutions, odd-numbered ones
the solutions with their first answer reset to the stub (so runs that fail some tests are timed
too). Writes benchmarks/results/grading.md, and checks that every run gives the grades of the
plain run to the students they share.
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


def _time(course: Path, students: int, **options) -> tuple[object, float, list[tuple]]:
    from course_lib.grading.pipeline import autograde

    chosen = [f"student{k:02d}" for k in range(students)]
    started = time.perf_counter()
    run = autograde(course, course / "submitted", ASSIGNMENT, students=chosen, progress=False, **options)
    return run, time.perf_counter() - started, grades(course / "grades.csv")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=2, help="students in the default runs")
    parser.add_argument("--jobs1-students", type=int, help="students in the --jobs 1 run (default: --students)")
    parser.add_argument("--compare-students", type=int, default=2, help="students in the slow comparison runs")
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs1 = args.jobs1_students or args.students
        course = make_course(Path(tmp) / "course", max(args.students, jobs1, args.compare_students))
        plan = [("course autograde --jobs 1", jobs1, dict(jobs=1)),
                ("course autograde --jobs 2", args.students, dict(jobs=2)),
                ("course autograde --jobs 2 --cold-kernels", args.compare_students, dict(jobs=2, warm_kernels=False)),
                ("plain run: --jobs 2 --cold-kernels --run-demos", args.compare_students,
                 dict(jobs=2, warm_kernels=False, skip_demos=False))]
        for label, students, options in plan:
            run, wall, rows = _time(course, students, **options)
            runs[label] = (run, wall, rows, students)
            print(f"{label}: {students} students, {wall:.0f} s", flush=True)
        nbgrader_times = nbgrader_autograde_seconds(course, "student00")
    # grades.csv holds every kept grade: compare the students the plain run graded.
    compared = {f"student{k:02d}" for k in range(args.compare_students)}
    plain = [r for r in runs["plain run: --jobs 2 --cold-kernels --run-demos"][2] if r[0] in compared]
    same = all([r for r in rows if r[0] in compared] == plain for _, _, rows, _ in runs.values())
    default = per_notebook_seconds(runs["course autograde --jobs 2"][0])
    cold = per_notebook_seconds(runs["course autograde --jobs 2 --cold-kernels"][0])
    full = per_notebook_seconds(runs["plain run: --jobs 2 --cold-kernels --run-demos"][0])
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; every student hands in {len(default)} "
             "notebooks.", "",
             "| run | students | wall time | per student | 30 students |", "|---|---|---|---|---|"]
    for label, (run, wall, _, students) in runs.items():
        per_student = wall / students
        thirty = f"{wall / 60:.1f} min (measured)" if students == 30 else f"{per_student * 30 / 60:.0f} min (projected)"
        lines.append(f"| {label} | {students} | {wall:.0f} s | {per_student:.0f} s | {thirty} |")
    lines += ["", f"Every run gives the plain run's grades to the students it shares with it: {same}.", "",
              "| notebook | nbgrader autograde (1 student, CLI) | plain run | cold kernels, demos skipped | default (warm, demos skipped) |",
              "|---|---|---|---|---|"]
    for name in default:
        lines.append(f"| {name} | {nbgrader_times.get(name, float('nan')):.0f} s | {full[name]:.0f} s | {cold[name]:.0f} s "
                     f"| {default[name]:.0f} s |")
    lines.append("")
    lines.append("(per-notebook columns: seconds of one notebook's run, averaged over students; the three course "
                 "columns ran with 2 jobs at once, so each had about one core. Projections multiply the per-student "
                 "time, start-up included, so they overstate.)")
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "grading.md").write_text(table + "\n")
    if not same:
        raise SystemExit("grades differ between runs: see above")


if __name__ == "__main__":
    main()

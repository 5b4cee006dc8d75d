"""`course autograde` on a class of hostile and broken submissions of a tiny assignment.

Every submission ends with rows, the right points and a reason, while the batch goes on; student
code cannot write the gradebook, the course or the package; grading twice gives the same grades;
a failed re-grade replaces the old grade; feedback never shows hidden tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from course_lib.grading.pipeline import autograde
from course_lib.grading.sandbox import choose_sandbox
from grading_fixtures import EXPECTED, TINY, make_tiny_course, rows_by_student, tiny_class, write_class

PACKAGE = Path(__file__).resolve().parent.parent / "course_lib"
ISOLATED = choose_sandbox().kind != "none"
needs_isolation = pytest.mark.skipif(
    not ISOLATED, reason="needs bubblewrap or root (the `nobody` sandbox): `make install` adds bubblewrap as root")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The tiny class graded once with two jobs (module scope: several tests read the result)."""
    root = make_tiny_course(tmp_path_factory.mktemp("course"))
    subs = tiny_class(root)
    folder = write_class(subs, root / "submitted")
    # A notebook of another assignment, handed in as this one: reported, and the student still has rows.
    other = root / "submitted" / "other_assignment" / TINY / "00_setup.ipynb"
    other.parent.mkdir(parents=True)
    shutil.copy(PACKAGE.parent / "notebooks" / "mech_interp" / "00_setup.ipynb", other)
    before = _digest(PACKAGE)
    run = autograde(root, folder, TINY, jobs=2, cell_timeout_s=5, notebook_timeout_s=120, progress=False)
    return root, run, before


@needs_isolation
def test_every_submission_gets_its_points_and_a_reason(graded):
    root, run, _ = graded
    rows = rows_by_student(root / "grades.csv")
    assert set(rows) == set(EXPECTED) | {"other_assignment"}, "every student has rows, whatever they handed in"
    for student, (points, word) in EXPECTED.items():
        mine = rows[student]["01_tiny"]
        assert [r["test"] for r in mine] == ["test_add", "test_add_hidden", "test_mul"]
        got = sum(float(r["points"]) for r in mine)
        reasons = " | ".join(r["reason"] for r in mine if float(r["points"]) < float(r["max_points"]))
        assert got == points, f"{student}: {got} points, expected {points}; reasons: {reasons}"
        if word is None:
            assert reasons == "", f"{student}: {reasons}"
        else:
            assert word in reasons, f"{student}: expected {word!r} in {reasons!r}"
        for r in mine:  # every lost point has a reason
            assert (float(r["points"]) < float(r["max_points"])) == bool(r["reason"]), (student, r)
        # 02_second was never handed in: zero, said so.
        assert {r["reason"] for r in rows[student]["02_second"]} == {"not submitted"}
    assert {r["reason"] for r in rows["other_assignment"]["01_tiny"]} == {"not submitted"}
    # With bubblewrap every kernel was forked from a preloaded one (the default), however it ended.
    ran = {g.kernel for g in run.grades if g.kernel}
    assert ran == ({"warm"} if run.sandbox == "bubblewrap" else {"cold"}), ran
    assert any("00_setup.ipynb" in str(u.path) and "not a notebook of tiny" in u.reason for u in run.unmatched)


@needs_isolation
def test_nothing_a_submission_does_reaches_the_course(graded):
    root, run, before = graded
    assert _digest(PACKAGE) == before, "a submission changed the installed package"
    import sqlite3

    with sqlite3.connect(root / "gradebook.db") as db:  # still a valid gradebook, with everyone in it
        students = {s for (s,) in db.execute("select id from student")}
    assert set(EXPECTED) <= students
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        assert gb.find_submission_notebook("01_tiny", TINY, "correct").score == 4
        assert gb.find_submission_notebook("01_tiny", TINY, "blank").score == 0
        assert gb.find_submission_notebook("02_second", TINY, "correct").score == 0
    flagged = {g.student for g in run.grades if g.flags}
    assert "writes_grading" in flagged, "an attempt on the grading's files is flagged for the instructor"


@needs_isolation
def test_the_report_lists_what_needs_a_look(graded):
    root, run, _ = graded
    page = (root / "grading" / TINY / "report.html").read_text()
    assert (root / "grading" / TINY / "distribution.png").stat().st_size > 1000
    for student in ("sigint", "exits", "segfault", "writes_grading", "test_edited", "test_deleted", "invalid_json"):
        assert f"<td>{student}</td>" in page, f"{student} should be in the report's list"
    assert "<td>correct</td>" not in page
    totals = (root / "totals.csv").read_text().splitlines()
    assert totals[0] == "student,01_tiny,02_second,total,max_total,needs_a_look"
    assert "correct,4,0,4,5," in totals


@needs_isolation
def test_feedback_shows_messages_and_never_hidden_tests(graded):
    root, _, _ = graded
    page = (root / "feedback" / "wrong" / TINY / "01_tiny.html").read_text()
    assert "add(1, 2) should be 3" in page  # a visible check's message
    # A hidden test shows pass or fail only: what it printed could carry its code.
    assert "add(-5, 5)" not in page and "The hidden test failed" in page
    for student in EXPECTED:  # and never a hidden test's code
        text = (root / "feedback" / student / TINY / "01_tiny.html").read_text()
        assert "HIDDEN TESTS" not in text and "assert add(-5, 5)" not in text and "Hidden test of add" not in text


def test_feedback_escapes_what_a_submission_prints(tmp_path):
    from course_lib.grading.feedback import feedback_html
    from course_lib.grading.score import NotebookGrade, TestOutcome

    grade = NotebookGrade("s", "01_tiny", [TestOutcome("test_add", 0, 1, "<script>alert(1)</script>")])
    executed = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    executed.cells[0].metadata["nbgrader"] = {"grade_id": "test_add"}
    executed.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="<img src=x onerror=alert(1)>")]
    page = feedback_html(grade, executed, TINY)
    assert "<script>" not in page and "<img" not in page


@needs_isolation
def test_grading_twice_gives_the_same_grades_and_a_failed_regrade_replaces_the_old(graded, tmp_path):
    root, _, _ = graded
    first = (root / "grades.csv").read_text()
    again = autograde(root, root / "submitted", TINY, jobs=2, cell_timeout_s=5, notebook_timeout_s=120,
                      progress=False, students=["correct", "wrong", "loop", "exits", "test_edited"])
    assert len(again.grades) == 10
    assert (root / "grades.csv").read_text() == first, "the same submissions graded again must score the same"
    # The correct student's file breaks: the re-grade scores zero, with the reason, and the old 4 is gone.
    (root / "submitted" / "correct" / TINY / "01_tiny.ipynb").write_text("{ broken")
    autograde(root, root / "submitted", TINY, students=["correct"], progress=False)
    rows = rows_by_student(root / "grades.csv")["correct"]["01_tiny"]
    assert sum(float(r["points"]) for r in rows) == 0
    assert all("not valid notebook JSON" in r["reason"] for r in rows)


def test_a_plain_folder_and_an_lms_zip_are_collected(tmp_path):
    from course_lib.grading.collect import collect

    ids = {"01_tiny": {"add", "mul", "test_add", "imports", "intro"}, "02_second": {"neg", "test_neg", "imports2"}}
    src = tmp_path / "src.ipynb"
    nb = make_tiny_notebook_with_ids(["intro", "imports", "add", "test_add", "mul"])
    nbformat.write(nb, src)
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(src, plain / "alice.ipynb")  # a plain <student>.ipynb: the notebook from its grade ids
    (plain / "bob.ipynb").write_text("")  # unreadable and unnamed: reported, not dropped
    found, unmatched = collect(plain, TINY, ids)
    assert [(s.student, s.notebook) for s in found] == [("alice", "01_tiny")]
    assert [u.student for u in unmatched] == ["bob"]

    import zipfile

    archive = tmp_path / "canvas.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(src, "doejane_12345_678901_01_tiny.ipynb")
        zf.write(src, "doejane_LATE_12345_678902_01_tiny-1.ipynb")  # the later attempt wins
        zf.write(src, "Jan Kowalski_4242_assignsubmission_file_/my work.ipynb")  # Moodle: folder per student
        zf.write(src, "Assignment1_jsmith_attempt_2026-11-20-10-00-00_01_tiny.ipynb")  # Blackboard
        zf.write(src, "__MACOSX/._doejane_12345_678901_01_tiny.ipynb")
    found, unmatched = collect(archive, TINY, ids, unpack_to=tmp_path / "unpacked")
    assert [(s.student, s.notebook) for s in found] == [
        ("Jan_Kowalski_4242", "01_tiny"), ("doejane", "01_tiny"), ("jsmith", "01_tiny")]
    assert next(s for s in found if s.student == "doejane").path.name.endswith("-1.ipynb")
    assert any("earlier attempt" in u.reason for u in unmatched)


def test_a_zip_that_escapes_its_folder_is_refused(tmp_path):
    import zipfile

    from course_lib.grading.collect import collect

    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escaped.ipynb", "{}")
    with pytest.raises(ValueError, match="outside its folder"):
        collect(archive, TINY, {"01_tiny": set()}, unpack_to=tmp_path / "unpacked")
    assert not (tmp_path.parent / "escaped.ipynb").exists()


def make_tiny_notebook_with_ids(ids):
    nb = nbformat.v4.new_notebook()
    for gid in ids:
        cell = nbformat.v4.new_code_cell("pass")
        cell.metadata["nbgrader"] = {"grade_id": gid}
        nb.cells.append(cell)
    return nb


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1", "::1", "localhost"])
@needs_isolation
def test_grading_on_a_dask_scheduler_with_two_workers(tmp_path):
    """The same command on a cluster: a scheduler and two workers started on loopback."""
    import socket
    import subprocess
    import sys

    root = make_tiny_course(tmp_path / "course")
    subs = tiny_class(root)
    write_class({k: subs[k] for k in ("correct", "wrong", "exits", "blank")}, root / "submitted")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                           "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client, get_task_stream

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            with get_task_stream(client) as stream:
                run = autograde(root, root / "submitted", TINY, scheduler=address, cell_timeout_s=5,
                                notebook_timeout_s=120, progress=False)
        workers_used = {task["worker"] for task in stream.data}
        assert len(workers_used) == 2, f"the tasks ran on {workers_used}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    rows = rows_by_student(root / "grades.csv")
    points = {s: sum(float(r["points"]) for r in rows[s]["01_tiny"]) for s in rows}
    assert points == {"correct": 4, "wrong": 2, "exits": 0, "blank": 0}
    assert {g.sandbox for g in run.grades if g.notebook == "01_tiny"} == {run.sandbox}


def test_a_machine_that_cannot_run_kernels_grades_nobody(tmp_path):
    """When no kernel starts (here: a memory limit too small for Python), grading stops with the
    reason before anyone is graded: a broken grader must not give a whole class zero."""
    root = make_tiny_course(tmp_path / "course")
    write_class({"correct": tiny_class(root)["correct"]}, root / "submitted")
    with pytest.raises(RuntimeError, match="does not start.*nobody was graded"):
        autograde(root, root / "submitted", TINY, memory_gb=0.02, progress=False)
    assert not (root / "grades.csv").exists() and not (root / "grading" / TINY / "results").exists()


def test_the_weaker_sandboxes_say_what_they_leave_open():
    from course_lib.grading.sandbox import choose_sandbox

    none = choose_sandbox(require="none")
    assert none.kind == "none" and "bubblewrap" in none.warning and "can write" in none.warning
    if os.geteuid() == 0:
        try:
            nobody = choose_sandbox(require="nobody")
        except RuntimeError as err:  # e.g. a virtual environment under /root, which nobody cannot read
            assert "readable by other users" in str(err)
        else:
            assert "network" in nobody.warning


@needs_isolation
def test_the_sandbox_has_no_network_and_sees_no_solutions(tmp_path):
    """What a grading kernel can reach, asked from inside it."""
    import tempfile

    from course_lib.grading.run import RunSettings, execute

    # Outside /tmp (which every kernel gets fresh and empty), so that only the hiding can hide it.
    outside = Path(tempfile.mkdtemp(dir="/var/tmp")) if Path("/var/tmp").is_dir() else tmp_path
    root = make_tiny_course(outside / "course")
    from course_lib.grading.pipeline import _hidden_paths

    box = choose_sandbox(_hidden_paths(root, root / "submitted"))
    code = (
        "import os, socket\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=3); print('NETWORK')\n"
        "except OSError:\n    print('no network')\n"
        "seen = lambda path: os.path.isdir(path) and os.listdir(path)\n"
        f"print('solutions visible' if seen({str(root / 'solutions')!r}) else 'solutions hidden')\n"
        f"print('git history visible' if seen({str(PACKAGE.parent / '.git')!r}) else 'git history hidden')\n"
        # The course the package was installed from: its solution notebooks hold the answers.
        f"print('package solutions visible' if seen({str(PACKAGE.parent / 'solutions')!r}) else 'package solutions hidden')\n"
        "import course_lib.checks, course_lib.models.toy\nprint('package importable')\n"
        f"gradebook = {str(root / 'gradebook.db')!r}\n"
        "print('gradebook readable' if os.path.exists(gradebook) and os.path.getsize(gradebook) else 'gradebook hidden')\n"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    settings = RunSettings(cell_timeout_s=30, sandbox_kind=box.kind, sandbox_hidden=box.hidden,
                           sandbox_visible=box.visible)
    with tempfile.TemporaryDirectory() as work:
        nb, status = execute(nb, settings, Path(work))
    shutil.rmtree(outside, ignore_errors=True)
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert status == {0: "ok"}, (status, nb.cells[0].outputs)
    if box.kind == "bubblewrap":
        assert "no network" in text and "solutions hidden" in text and "gradebook hidden" in text, text
        assert "package solutions hidden" in text and "git history hidden" in text, text
    assert "package importable" in text, text


def test_demo_cells_are_skipped_only_when_nothing_needs_them():
    from course_lib.grading.assemble import assemble
    from course_lib.grading.demos import cells_to_skip
    import copy

    source = __import__("grading_fixtures").tiny_source()
    release = copy.deepcopy(source)
    for cell in release.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = "raise NotImplementedError()"
    demo_print, demo_offset = 5, 6
    plain = assemble(source, release, copy.deepcopy(release)).notebook
    assert cells_to_skip(plain, source) == ({demo_print, demo_offset}, "")
    # An answer that reads a name a demo binds: that demo runs.
    uses = copy.deepcopy(release)
    uses.cells[6 + 1].source = "def mul(a, b):\n    return a * b + OFFSET"
    skip, _ = cells_to_skip(assemble(source, release, uses).notebook, source)
    assert skip == {demo_print}
    # An edited demo is the student's code: it runs.
    edited = copy.deepcopy(release)
    edited.cells[demo_print].source = "print(add(3, 3))"
    assert demo_print not in cells_to_skip(assemble(source, release, edited).notebook, source)[0]
    # Dynamic access to the namespace: nothing is skipped.
    for code in ("g = globals()['OFFSET']", "exec('x = OFFSET')", "%time x = 1", "import __main__"):
        dynamic = copy.deepcopy(release)
        dynamic.cells[6 + 1].source = code
        skip, why = cells_to_skip(assemble(source, release, dynamic).notebook, source)
        assert skip == set() and why, code


@pytest.mark.slow
@needs_isolation
def test_warm_kernels_and_skipped_demos_give_the_grades_of_a_plain_run(tmp_path):
    """The same submissions of two real notebooks graded as a plain top-to-bottom run (every cell,
    each kernel a fresh process) and as `course autograde` grades by default (kernels forked from
    a preloaded process, demos skipped): identical points and reasons. benchmarks/grading.py does
    the same for all six notebooks."""
    import csv

    from course_lib.grading import release as release_course

    root = tmp_path / "course"
    for name in ("solutions", "notebooks"):
        shutil.copytree(PACKAGE.parent / name, root / name)
    shutil.copy(PACKAGE.parent / "nbgrader_config.py", root / "nbgrader_config.py")
    release_course(root)
    names = ["00_setup", "03_residual_stream"]
    for name in names:
        solution = nbformat.read(root / "solutions" / "mech_interp" / f"{name}.ipynb", 4)
        released = nbformat.read(root / "notebooks" / "mech_interp" / f"{name}.ipynb", 4)
        # "mixed": some answers right, some not (see copy_answers).
        mixed = copy_answers(solution, released)
        # (The solutions' full runs are the browser tests' business: every test passes there.)
        for student, nb in (("solved", solution), ("mixed", mixed)) if name == "00_setup" else (("mixed", mixed),):
            path = root / "submitted" / student / "mech_interp" / f"{name}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, path)
    rows = {}
    for fast in (False, True):
        run = autograde(root, root / "submitted", "mech_interp", jobs=2, notebooks=names, progress=False,
                        skip_demos=fast, warm_kernels=fast)
        assert {g.kernel for g in run.grades if g.kernel} == ({"warm"} if fast and run.sandbox == "bubblewrap" else {"cold"})
        with (root / "grades.csv").open() as f:
            rows[fast] = [(r["student"], r["notebook"], r["test"], r["points"], r["reason"]) for r in csv.DictReader(f)]
    assert rows[True] == rows[False]
    points = {}
    for student, notebook, _, p, _ in rows[True]:
        points[(student, notebook)] = points.get((student, notebook), 0) + float(p)
    assert points[("solved", "00_setup")] == 6 and points[("mixed", "00_setup")] == 4
    assert 0 < points[("mixed", "03_residual_stream")] < 22


def copy_answers(solution, released):
    """The solution notebook, with its first answer cell reset to the stub and (if it has more than
    two) its last one deleted."""
    import copy

    nb = copy.deepcopy(solution)
    answers = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    stub = next(c for c in released.cells if c.metadata.get("nbgrader", {}).get("grade_id") == answers[0].metadata.nbgrader.grade_id)
    answers[0].source = stub.source
    if len(answers) > 2:
        answers[-1].source = "x = 1  # the function is gone"
    return nb


def test_a_kernel_that_never_started_is_a_grading_error_not_a_zero_for_the_student(tmp_path):
    """If a worker cannot start a kernel (after one retry), the row says it is the grader's fault
    and the report lists it for a re-grade."""
    from course_lib.grading.assemble import assemble
    from course_lib.grading.gradebook import needs_a_look
    from course_lib.grading.pipeline import _score
    from course_lib.grading.collect import Submission
    from course_lib.grading.run import RunResult

    root = make_tiny_course(tmp_path / "course")
    source = nbformat.read(root / "solutions" / TINY / "01_tiny.ipynb", 4)
    release = nbformat.read(root / "notebooks" / TINY / "01_tiny.ipynb", 4)
    assembled = assemble(source, release, release)
    code = [i for i, c in enumerate(assembled.notebook.cells) if c.cell_type == "code"]
    failed = RunResult(nbformat.writes(assembled.notebook),
                       {str(i): "not run: the grading kernel failed: RuntimeError: Kernel died before replying" for i in code}, 3.0)
    nb = type("NB", (), {"name": "01_tiny", "source": source})
    grade = _score("s", nb, Submission("s", "01_tiny", root / "x.ipynb", "test"), assembled, failed)
    assert grade.points == 0 and all(t.reason.startswith("grading error, not the student's") for t in grade.tests)
    assert any("grade this notebook again" in why for why in needs_a_look(grade))

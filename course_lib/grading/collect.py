"""Find every submitted notebook: whose it is and which course notebook it is.

Three layouts are read (`collect(path, ...)` picks by what it finds):

* nbgrader's: `submitted/<student>/<assignment>/<notebook>.ipynb`;
* a plain folder of `<student>.ipynb` files, or of `<student>/<notebook>.ipynb` folders;
* an LMS download, as a folder or a .zip, whose file names carry the student:
  Canvas `doejane_LATE_12345_678901_00_setup-1.ipynb`,
  Moodle `Jane Doe_12345_assignsubmission_file_00_setup.ipynb` (or one folder per student),
  Blackboard `Assignment_jdoe_attempt_2026-11-20-10-00-00_00_setup.ipynb`.

Which course notebook a file is comes from its content first (the nbgrader grade ids it
carries), then from its name: students rename files, LMSs mangle names, and a plain
`<student>.ipynb` carries no notebook name at all. A file that is neither is reported, never dropped.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

MAX_NOTEBOOK_BYTES = 50_000_000  # a notebook bigger than this is not read (its outputs, not code)
MAX_ZIP_BYTES = 2_000_000_000  # an LMS download bigger than this once unpacked is refused
_IGNORED_PARTS = {"__MACOSX", ".ipynb_checkpoints"}

# LMS file names: (name, regex with a `student` group and a `rest` group holding the file name).
LMS_PATTERNS = [
    ("canvas", re.compile(r"^(?P<student>[^_/]+)_(?:LATE_|late_)?\d+_\d+_(?P<rest>.+)$")),
    # Moodle: "Full Name_<participant id>_…": the id keeps two students of one name apart.
    ("moodle", re.compile(r"^(?P<student>[^_/]+?_\d+)_assignsubmission_(?:file|onlinetext)_(?P<rest>.*)$")),
    ("blackboard", re.compile(r"^.*?_(?P<student>[^_/]+)_attempt_(?P<stamp>[\d-]+)_?(?P<rest>.*)$")),
]
# Canvas appends -1, -2, ... to a file submitted again: the highest is the last attempt.
_CANVAS_ATTEMPT = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class Submission:
    """One submitted file: whose, which notebook, and how that was decided."""

    student: str
    notebook: str  # the course notebook's name without .ipynb, e.g. "00_setup"
    path: Path
    how: str  # e.g. "nbgrader layout", "canvas file name; notebook from its grade ids"
    attempt: tuple = ()  # orders several files of one student x notebook (last wins)


@dataclass(frozen=True)
class Unmatched:
    """A submitted file that could not be matched to a student and a course notebook."""

    path: Path
    student: str | None
    reason: str


def safe_student_id(name: str) -> str:
    """A student id that is safe as a folder name and in nbgrader's gradebook ("Jane Doe" -> "Jane_Doe")."""
    cleaned = re.sub(r"[^A-Za-z0-9_.@-]+", "_", name.strip()).strip("._")
    if not cleaned:
        raise ValueError(f"cannot make a student id from {name!r}")
    return cleaned


def grade_ids_of(path: Path) -> set[str] | None:
    """The nbgrader grade ids in a notebook file, or None where it is not a readable notebook."""
    try:
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            return None
        cells = json.loads(path.read_text(errors="replace"))["cells"]
        return {
            c["metadata"]["nbgrader"]["grade_id"]
            for c in cells
            if isinstance(c, dict) and isinstance(c.get("metadata", {}).get("nbgrader"), dict)
            and isinstance(c["metadata"]["nbgrader"].get("grade_id"), str)
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def identifying_ids(source) -> set[str]:
    """The grade ids that tell a notebook apart: its answer and test cells (text and import cells
    share ids like "intro" across notebooks)."""
    ids = set()
    for cell in source.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade_id") and (meta.get("solution") or meta.get("grade")):
            ids.add(meta["grade_id"])
    return ids


def identify_notebook(path: Path, course_ids: dict[str, set[str]]) -> tuple[str | None, str]:
    """Which course notebook `path` is: (name or None, how it was decided).

    `course_ids` maps each course notebook to its grade ids. The answer-cell ids are unique to a
    notebook (see `identifying_ids`), so one shared id decides; otherwise the longest course
    notebook name in the file name.
    """
    ids = grade_ids_of(path)
    if ids:
        overlap = {name: len(ids & own) for name, own in course_ids.items()}
        best = max(overlap, key=overlap.get)
        runner_up = sorted(overlap.values())[-2] if len(overlap) > 1 else 0
        if overlap[best] >= 1 and overlap[best] > runner_up:
            return best, "its grade ids"
    by_name = [name for name in course_ids if name in path.name]
    if by_name:
        return max(by_name, key=len), "its file name"
    return None, "neither its grade ids nor its file name match a notebook of this assignment"


def _from_lms_name(file_name: str) -> tuple[str, str, str, tuple] | None:
    """(LMS, student, the file name the student uploaded, attempt order) from an LMS file name."""
    for lms, pattern in LMS_PATTERNS:
        match = pattern.match(file_name)
        if match:
            rest = match.group("rest")
            stem = Path(rest).stem
            attempt = _CANVAS_ATTEMPT.search(stem) if lms == "canvas" else None
            # (attempt number, time stamp text): comparable across every layout (see collect).
            order = (int(attempt.group(1)) if attempt else 0, match.group("stamp") if lms == "blackboard" else "")
            return lms, match.group("student"), rest, order
    return None


def unpack_zip(archive: Path, into: Path) -> Path:
    """Unpack an LMS zip safely: no paths outside `into`, no links, bounded size."""
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members)
        if total > MAX_ZIP_BYTES:
            raise ValueError(f"{archive} unpacks to {total / 1e9:.1f} GB (limit {MAX_ZIP_BYTES / 1e9:.0f} GB).")
        for member in members:
            target = (into / member.filename).resolve()
            if not target.is_relative_to(into.resolve()):
                raise ValueError(f"{archive} holds a file outside its folder: {member.filename!r}.")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, target.open("wb") as dst:
                dst.write(src.read())
    return into


def _notebook_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*.ipynb")
        if p.is_file() and not p.is_symlink() and not _IGNORED_PARTS & set(p.relative_to(folder).parts)
    )


def collect(
    path: Path, assignment: str, course_ids: dict[str, set[str]], unpack_to: Path | None = None
) -> tuple[list[Submission], list[Unmatched]]:
    """Every submission under `path` (a folder or an LMS .zip), the last attempt of each
    student x notebook; and the files that could not be matched, with why."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No submissions at {path}: pass a folder or an LMS .zip download.")
    if path.is_file():
        if path.suffix != ".zip":
            raise ValueError(f"{path} is a file but not a .zip: pass a folder of submissions or an LMS .zip.")
        if unpack_to is None:
            raise ValueError("unpack_to is needed to read a .zip")
        path = unpack_zip(path, unpack_to)
    # `course autograde submitted/` and `course autograde .` (the course root) mean the same.
    if (path / "submitted").is_dir() and any((path / "submitted").glob(f"*/{assignment}")):
        path = path / "submitted"
    found: list[Submission] = []
    unmatched: list[Unmatched] = []
    for file in _notebook_files(path):
        parts = file.relative_to(path).parts
        student, how, order = None, "", (0, "")
        if len(parts) == 3 and parts[1] == assignment:
            student, how = parts[0], "nbgrader layout"
        else:
            lms = _from_lms_name(parts[0]) if len(parts) <= 2 else None
            if lms and len(parts) == 2 and lms[0] != "moodle":
                lms = None  # Canvas and Blackboard put every file in one folder
            if lms:
                name, student, _, order = lms
                how = f"{name} file name"
            elif len(parts) == 1:
                student, how = file.stem, "plain folder (<student>.ipynb)"
            elif len(parts) == 2:
                student, how = parts[0], "plain folder (<student>/<notebook>.ipynb)"
        if student is None:
            unmatched.append(Unmatched(file, None, f"cannot tell whose it is from its path {'/'.join(parts)}"))
            continue
        try:
            student = safe_student_id(student)
        except ValueError as err:
            unmatched.append(Unmatched(file, None, str(err)))
            continue
        notebook, by = identify_notebook(file, course_ids)
        if notebook is None:
            unmatched.append(Unmatched(file, student, f"not a notebook of {assignment}: {by}"))
            continue
        # Ties between attempts (no number, no stamp) go to the file written last.
        found.append(Submission(student, notebook, file, f"{how}; notebook from {by}", (*order, file.stat().st_mtime)))
    # Several files of one student x notebook: the last attempt is graded.
    latest: dict[tuple[str, str], Submission] = {}
    for sub in found:
        key = (sub.student, sub.notebook)
        if key not in latest or sub.attempt > latest[key].attempt:
            if key in latest:
                unmatched.append(Unmatched(latest[key].path, sub.student, f"an earlier attempt at {sub.notebook}: "
                                           f"{sub.path.name} is graded instead"))
            latest[key] = sub
        else:
            unmatched.append(Unmatched(sub.path, sub.student, f"an earlier attempt at {sub.notebook}: "
                                       f"{latest[key].path.name} is graded instead"))
    return sorted(latest.values(), key=lambda s: (s.student, s.notebook)), unmatched

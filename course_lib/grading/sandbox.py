"""Where student code runs: a kernel with no way to write outside its scratch folder.

Only the kernel is sandboxed; the grader that drives it (`course_lib.grading.run`) runs outside,
talks to it over Unix sockets in the scratch folder, and alone writes results. The best
mechanism the machine offers is used:

* `bubblewrap` (Debian's `bubblewrap` package; `make install` adds it where it can): the whole
  file system read-only, the course's submissions, solutions and gradebook hidden, a fresh /tmp,
  no network (a new network namespace), its own process namespace, an unprivileged user;
* without it, as root: the kernel runs as `nobody`, so the root-owned course, package and
  gradebook are not writable; the network stays reachable (a warning says so);
* otherwise: the kernel runs as the grading user, which can write what that user can (a warning
  says so). Fine for a learner's self-check, not for grading strangers.

In every case the kernel gets resource limits: address space (memory), CPU seconds, the size of
any file it writes, no core dumps.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    """Resource limits of one grading kernel."""

    memory_bytes: int = 6 * 2**30  # SmolLM2 and torch need ~2 GB; a runaway allocation stops here
    cpu_seconds: int = 1800  # CPU time, all cells together (the wall clock is bounded separately)
    file_bytes: int = 256 * 2**20  # the largest file the kernel may write


@dataclass(frozen=True)
class Sandbox:
    """How kernels are confined on this machine, and what that leaves open."""

    kind: str  # "bubblewrap", "nobody" or "none"
    warning: str = ""
    hidden: tuple[str, ...] = field(default=())  # folders and files the kernel must not even read
    visible: tuple[str, ...] = field(default=())  # folders it must read (the package, the venv, caches)

    def kernel_argv(self, work: Path, limits: Limits, python: str = sys.executable) -> list[str]:
        """The command that starts an IPython kernel confined to `work` (before `-f CONNECTION_FILE`)."""
        return self.command_argv([python, "-m", "ipykernel_launcher"], work, limits, python=python)

    def command_argv(self, command: list[str], writable: Path, limits: Limits, readonly: tuple[Path, ...] = (),
                     python: str = sys.executable) -> list[str]:
        """`command` confined: it may write only in `writable`, and also reads `readonly`."""
        limit_then = [python, "-I", "-S", "-c", _APPLY_LIMITS, str(limits.memory_bytes),
                      str(limits.cpu_seconds), str(limits.file_bytes), "0" if self.kind != "nobody" else str(NOBODY)]
        if self.kind == "bubblewrap":
            return limit_then + [shutil.which("bwrap") or "bwrap", *self._bwrap_args(writable, readonly), "--", *command]
        return limit_then + command

    def _bwrap_args(self, work: Path, readonly: tuple[Path, ...] = ()) -> list[str]:
        args = ["--ro-bind", "/", "/", "--dev", "/dev", "--tmpfs", "/dev/shm", "--proc", "/proc", "--tmpfs", "/tmp"]
        # First cover what the kernel must not read, then bind back, read-only, what it needs
        # from inside those (the package, the Python environment, the model cache).
        folders = [f for f in self.hidden if Path(f).is_dir() and Path(f) != Path("/")]
        # A hidden folder inside another one is covered with it (a second cover would hide the first).
        covered = [f for f in folders if not any(Path(other) in Path(f).parents for other in folders)]
        for folder in covered:
            args += ["--tmpfs", folder]
        for file in self.hidden:
            if Path(file).is_file() and not any(Path(other) in Path(file).parents for other in covered):
                args += ["--ro-bind", "/dev/null", file]
        for folder in (*self.visible, *map(str, readonly)):
            if Path(folder).exists():
                args += ["--ro-bind", folder, folder]
        args += ["--bind", str(work), str(work)]
        # What stays writable is the scratch folder, /tmp and /dev/shm: nothing else can keep a
        # file for a later kernel (warm kernels share one sandbox, which empties exactly those).
        for folder in [*covered, "/dev"]:
            if Path(folder) != Path("/tmp"):
                args += ["--remount-ro", folder]
        args += ["--chdir", str(work),
                 "--unshare-all", "--uid", str(NOBODY), "--gid", str(NOBODY),
                 "--die-with-parent", "--new-session",
                 # In its own process namespace the kernel's parent is pid 1, which ipykernel reads
                 # as "my parent exited"; --die-with-parent does that watching instead.
                 "--setenv", "JPY_PARENT_PID", "1"]
        return args


# Runs as a tiny Python program before the kernel: set the limits, drop to `nobody` if asked, exec.
_APPLY_LIMITS = """
import os, resource, sys
memory, cpu, fsize, uid = (int(v) for v in sys.argv[1:5])
for name, value in (("RLIMIT_AS", memory), ("RLIMIT_CPU", cpu), ("RLIMIT_FSIZE", fsize), ("RLIMIT_CORE", 0)):
    try:  # macOS refuses some limits (RLIMIT_AS): a learner's self-check still runs there
        resource.setrlimit(getattr(resource, name), (value, value + 5 if name == "RLIMIT_CPU" else value))
    except (ValueError, OSError, AttributeError):
        if uid or name != "RLIMIT_AS" or sys.platform == "linux":
            raise
if uid:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
os.execvp(sys.argv[5], sys.argv[5:])
"""


def _needed_paths() -> tuple[str, ...]:
    """Folders a grading kernel reads: the course package, the Python environment, the model cache."""
    from course_lib.models.pretrained import cache_dir

    package = Path(__file__).resolve().parents[1]  # course_lib itself, not the folder around it
    paths = {package, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), cache_dir().resolve()}
    return tuple(sorted(str(p) for p in paths))


def _nobody_cannot_run() -> str:
    """Why `nobody` cannot start this Python with the course package ("" when it can)."""
    import subprocess

    if os.geteuid() != 0:
        return "needs root (to start kernels as the `nobody` user)"
    argv = Sandbox("nobody").kernel_argv(Path("/"), Limits())[:-2] + ["-c", "import ipykernel, course_lib"]
    try:
        probe = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    if probe.returncode == 0:
        return ""
    last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
    return (f"`nobody` cannot run {sys.executable} with the course package ({last}); the Python environment "
            "must be readable by other users (a virtual environment under /root is not)")


def _bubblewrap_works() -> bool:
    """bwrap is installed and may create the namespaces (some containers forbid it)."""
    import subprocess

    bwrap = shutil.which("bwrap")
    if not bwrap:
        return False
    try:
        probe = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--unshare-all", "--uid", str(NOBODY), "--die-with-parent", "true"],
            capture_output=True, timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def choose_sandbox(hidden: list[Path] = (), require: str | None = None) -> Sandbox:
    """The strongest sandbox this machine offers (or exactly `require`: "bubblewrap", "nobody", "none")."""
    hidden_paths = tuple(str(Path(p).resolve()) for p in hidden)
    if require in (None, "bubblewrap") and _bubblewrap_works():
        return Sandbox("bubblewrap", hidden=hidden_paths, visible=_needed_paths())
    if require == "bubblewrap":
        raise RuntimeError(
            "bubblewrap is not usable here: install it (`sudo apt-get install -y bubblewrap`) and allow "
            "unprivileged user namespaces, or grade with --sandbox nobody/none."
        )
    nobody_error = _nobody_cannot_run() if require in (None, "nobody") and os.geteuid() == 0 else "not root"
    if require == "nobody" and nobody_error:
        raise RuntimeError(f"--sandbox nobody: {nobody_error}")
    if require in (None, "nobody") and not nobody_error:
        return Sandbox("nobody", warning=(
            "bubblewrap is not available, so student code runs as `nobody` with resource limits: it cannot "
            "write the course, the package or the gradebook, but it can reach the network and read files. "
            "Install bubblewrap (`apt-get install -y bubblewrap`) for full isolation."))
    why = "" if nobody_error == "not root" else f" (running kernels as `nobody` is not possible: {nobody_error})"
    return Sandbox("none", warning=(
        "No sandbox: student code runs as you, with resource limits only, and can write whatever you "
        "can (the gradebook, the course). Fine for checking your own notebook; to grade a class, install "
        f"bubblewrap (`sudo apt-get install -y bubblewrap`) or grade as root{why}."))

"""Warm kernels: one preloaded Python per grading thread forks each notebook's kernel.

A notebook's kernel spends its first seconds on the same work for every student: starting Python,
importing torch, TransformerLens and the course package, and the first `load_model()` (which
imports the model code it needs). A *zygote* does that once, inside the sandbox, and then forks
one kernel per notebook: the child starts as a fresh kernel would after those imports.

What a child gets that a fresh process would not have, and how it is made equal again:

* the modules are imported already: importing them again in the notebook is a no-op, as in any
  kernel after its first import;
* one SmolLM2 is loaded already: the kernel's first `load_model()` returns it (built by the same
  code from the same files, never used before; later calls build new ones), and the checkers'
  own copy is loaded too. In a plain run the checkers load theirs at the first test that needs
  it, after the student's code has run: here no student code can have touched how it was built;
* torch's, Python's and numpy's global random generators are seeded anew from the OS, as a fresh
  process seeds them (otherwise every child would draw the zygote's numbers);
* warnings already shown in the zygote are forgotten (a fresh process would show them once);
* the environment, working folder, temp folder and matplotlib's config folder are the task's.

Isolation between the students one zygote serves (one at a time): before each child the zygote
kills every other process in its sandbox (its own process namespace, so `kill(-1)` reaches
exactly those), and empties /tmp, /dev/shm and every other task's folder: the only places in the
sandbox a kernel can write (`Sandbox` makes everything else read-only, /dev included). The zygote cannot be
debugged or read by its children (it is not dumpable); a child that kills it only ends its own
run, and the next task starts a new zygote. Without bubblewrap there is no process namespace to
clean, so kernels start cold (`sandbox` kind "nobody" or "none").

The grader side: `WarmKernels` starts the zygote (through `Sandbox.command_argv`, so with the same
limits and sandbox as a cold kernel) and hands it a listening socket. The kernel manager then
launches `client_argv()`: a tiny process that passes its environment, folder, arguments and
standard streams to the zygote, forwards SIGINT/SIGTERM, and exits with the kernel's status; when
the client dies (the grader killed it), the zygote kills the kernel.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# What the notebooks import, imported once per zygote. Only modules: nothing is left built.
PRELOAD = (
    "numpy", "pandas", "torch", "matplotlib", "matplotlib.pyplot", "matplotlib.colors", "transformer_lens",
    "course_lib.checks", "course_lib.models", "course_lib.activations", "course_lib.tokens", "course_lib.plotting",
    "course_lib.probing", "course_lib.shapley", "course_lib.whatif", "course_lib.lens", "course_lib.ablation",
    "course_lib.circuits", "course_lib.heads", "course_lib.patching", "course_lib.ioi_circuit", "course_lib.scrubbing",
    "course_lib.faithfulness", "ipykernel.kernelapp",
)
READY = "zygote ready"
START_TIMEOUT_S = 300
_LENGTH_BYTES = 8

# The kernel the kernel manager launches: hands its streams to the zygote and waits for the fork.
_CLIENT = r"""
import ctypes, json, os, signal, socket, sys
try:  # die with the grading process that launched us (PR_SET_PDEATHSIG = 1): the zygote then kills the kernel
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
except Exception:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
request = json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv[2:]}).encode()
socket.send_fds(s, [len(request).to_bytes(8, "big") + request], [0, 1, 2])
forward = lambda sig, frame: s.sendall(b"%d\n" % sig)
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
answer = b""
while b"\n" not in answer:
    chunk = s.recv(64)
    if not chunk:
        os._exit(1)  # the zygote is gone, and the kernel with it
    answer += chunk
os._exit(int(answer.split(b"\n")[0]))
"""


def client_argv(socket_path: str) -> list[str]:
    """The kernel command for the kernel manager (it appends `-f CONNECTION_FILE`)."""
    return [sys.executable, "-I", "-S", "-c", _CLIENT, socket_path]


# ------------------------------------------------------------------------------- grader side

class WarmKernels:
    """One zygote, started in the sandbox of `settings`, serving one task at a time."""

    def __init__(self, settings) -> None:
        from course_lib.grading.run import copy_font_cache, kernel_env

        self.root = Path(tempfile.mkdtemp(prefix="cg-warm-"))
        self.tasks = self.root / "tasks"  # each task's scratch folder is made in here
        self.home = self.root / "home"  # the zygote's own home (read-only in the sandbox)
        for folder in (self.tasks, self.home, self.root / "ctl"):
            folder.mkdir()
        self.socket_path = str(self.root / "ctl" / "zygote.sock")  # never visible in the sandbox
        copy_font_cache(self.home / ".mpl")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        listener.listen(4)
        box = settings.sandbox()
        argv = box.command_argv(
            [sys.executable, "-m", "course_lib.grading.warm", str(listener.fileno()), str(self.tasks), str(self.home)],
            writable=self.tasks, limits=settings.limits(), readonly=(self.home,),
        )
        env = kernel_env(self.home, settings.env)
        self.log = open(self.root / "zygote.log", "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
                                     env=env, cwd=str(self.tasks), pass_fds=(listener.fileno(),),
                                     start_new_session=True)
        listener.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:
                if line.decode(errors="replace").strip() == READY:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = self.last_log_line()
                self.stop()
                raise RuntimeError(f"the warm-kernel zygote did not start: {why}")

    def last_log_line(self) -> str:
        """The zygote's last line on stderr (why it stopped), for warnings."""
        try:
            lines = (self.root / "zygote.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1][:300] if lines else "no output"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


_local = threading.local()  # one zygote per grading thread (a local thread or a Dask worker thread)
_all: list[WarmKernels] = []
_lock = threading.Lock()


def usable_for_this_thread(settings) -> WarmKernels | None:
    """This thread's zygote for `settings`, started (or restarted: it died, or settings changed) when
    needed; None where warm kernels cannot run (no bubblewrap, or a zygote here already failed)."""
    key = json.dumps([settings.sandbox_kind, list(settings.sandbox_hidden), list(settings.sandbox_visible),
                      settings.memory_bytes, settings.cpu_seconds, settings.file_bytes, settings.env], sort_keys=True)
    if settings.sandbox_kind != "bubblewrap" or getattr(_local, "failed_key", None) == key:
        return None
    warm = getattr(_local, "warm", None)
    if warm is not None and (warm.key != key or not warm.alive()):
        stop(warm)
        warm = None
    if warm is None:
        try:
            warm = WarmKernels(settings)
        except (OSError, RuntimeError) as err:
            print(f"warning: warm kernels unavailable, this worker runs cold kernels: {err}", file=sys.stderr)
            _local.failed_key = key
            return None
        warm.key = key
        _local.warm = warm
        with _lock:
            _all.append(warm)
    return warm


def give_up_on_this_thread(warm: WarmKernels) -> None:
    """A zygote that did not fork a working kernel: stop it; this thread runs cold kernels for these settings."""
    print(f"warning: a warm kernel did not start ({warm.last_log_line()}); this worker runs cold kernels",
          file=sys.stderr)
    stop(warm)
    _local.failed_key = warm.key


def stop(warm: WarmKernels) -> None:
    """Stop one zygote (and forget it)."""
    warm.stop()
    with _lock:
        if warm in _all:
            _all.remove(warm)
    if getattr(_local, "warm", None) is warm:
        _local.warm = None


def stop_all() -> None:
    """Stop every zygote this process started (end of a grading run)."""
    with _lock:
        started = list(_all)
    for warm in started:
        stop(warm)


# ---------------------------------------------------------------------------- zygote side

def serve(listen_fd: int, tasks: Path, home: Path) -> None:
    """The zygote: preload, then fork one kernel per connection, cleaning the sandbox in between."""
    if len(_live_pids()) > 3:  # kill(-1) below must reach only this sandbox's processes
        sys.exit("the zygote runs only in a process namespace of its own (bubblewrap)")
    import importlib
    import warnings

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no OpenMP pool before fork: a forked child could not use it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PRELOAD:
            importlib.import_module(name)
        from course_lib.checks import _trust
        from course_lib.models import pretrained

        # One SmolLM2 for the notebook's first load_model(), one for the checkers' own copy: built
        # here once, shared copy-on-write by every child, never used before a child takes it.
        pretrained.PRELOADED.append(pretrained.load_model())
        _trust.private_pretrained()
    import gc

    gc.collect()
    torch.set_num_threads(threads)
    _not_dumpable()
    listener = socket.socket(fileno=listen_fd)
    print(READY, flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            _serve_one(listener, conn, tasks, home)


def _serve_one(listener: socket.socket, conn: socket.socket, tasks: Path, home: Path) -> None:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while len(data) < _LENGTH_BYTES or len(data) < _LENGTH_BYTES + int.from_bytes(data[:_LENGTH_BYTES], "big"):
        more = conn.recv(1 << 16)
        if not more:
            for fd in fds:
                os.close(fd)
            return
        data += more
    request = json.loads(data[_LENGTH_BYTES:])
    cwd = Path(request["cwd"])
    if cwd.parent != tasks or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.sendall(b"1\n")
        return
    _clean_sandbox(tasks, home, keep=cwd)
    pid = os.fork()
    if pid == 0:
        listener.close()
        conn.close()
        _run_kernel(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    status = _wait(pid, conn)
    _kill_all_but_me()
    try:
        conn.sendall(b"%d\n" % status)
    except OSError:
        pass


def _wait(pid: int, conn: socket.socket) -> int:
    """Wait for the kernel to exit (its exit code) or the client to go (kill the kernel); forward signals."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(conn, selectors.EVENT_READ)
    try:
        while True:
            # The client's messages wake this loop; a kernel's exit is seen within a tenth of a second.
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                return os.waitstatus_to_exitcode(status) % 256
            if not selector.select(timeout=0.1):
                continue
            chunk = conn.recv(64)
            if not chunk:  # the client was killed: so is the kernel
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return 1
            for line in chunk.split():
                if line.isdigit() and int(line) in (signal.SIGINT, signal.SIGTERM):
                    os.kill(pid, int(line))
    finally:
        selector.close()


def _run_kernel(request: dict, fds: list[int]) -> None:
    """In the forked child: become a fresh kernel process for this task, then run the kernel."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.setsid()
        _become_fresh(request)
        from ipykernel.kernelapp import IPKernelApp

        IPKernelApp.launch_instance(argv=request["argv"])
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _become_fresh(request: dict) -> None:
    import random
    import warnings

    import numpy
    import torch

    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = ["ipykernel_launcher", *request["argv"]]
    os.environ["JPY_PARENT_PID"] = "1"  # as for a cold kernel in bubblewrap: the zygote watches the client
    tempfile.tempdir = None  # found again from TMPDIR
    torch.seed()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    random.seed()
    numpy.random.seed()
    with warnings.catch_warnings():  # leaving it marks every module's "already shown" record stale
        pass
    import matplotlib

    for cached in (matplotlib.get_configdir, matplotlib.get_cachedir):
        getattr(cached, "cache_clear", lambda: None)()


def _clean_sandbox(tasks: Path, home: Path, keep: Path) -> None:
    """Before a student's kernel: no process of an earlier one, nothing it left in /tmp, /dev/shm or the tasks folder."""
    _kill_all_but_me()
    mine = (tasks, home)
    for folder in (Path("/tmp"), Path("/dev/shm")):
        for entry in _entries(folder):
            # Mount points are the sandbox's own (hidden folders, read-only binds): never emptied.
            if any(entry == p or entry in p.parents for p in mine) or os.path.ismount(entry):
                continue
            _remove(entry)
    for entry in _entries(tasks):
        if entry != keep:
            _remove(entry)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _remove(path: Path) -> None:
    """Delete `path`, but nothing under a mount point inside it (the sandbox's own binds)."""
    try:
        if os.path.ismount(path):
            return
        if path.is_dir() and not path.is_symlink():
            for entry in _entries(path):
                _remove(entry)
            path.rmdir()  # fails, harmlessly, when a mount point is left inside
        else:
            path.unlink()
    except OSError:
        pass


def _kill_all_but_me() -> None:
    """Kill every process of this sandbox but its init and the zygote (it has its own pid namespace)."""
    me = os.getpid()
    for _ in range(500):
        try:
            os.kill(-1, signal.SIGKILL)  # in a pid namespace: all of it but pid 1 and the caller
        except ProcessLookupError:
            pass
        while True:  # reap our own children
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not [pid for pid in _live_pids() if pid not in (1, me)]:
            return
        time.sleep(0.01)
    raise RuntimeError("processes of an earlier kernel could not be killed")


def _live_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in ("Z", "X"):
                pids.append(int(entry))
    return pids


def _not_dumpable() -> None:
    """Children (same user) may not ptrace the zygote or read its memory (PR_SET_DUMPABLE = 4)."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))

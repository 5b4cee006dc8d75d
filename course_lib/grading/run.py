"""Run one assembled notebook, top to bottom, in a sandboxed kernel; record what each cell did.

The grader (this module) stays outside the sandbox: it starts the kernel through
`Sandbox.kernel_argv`, talks to it over Unix sockets in the scratch folder (the kernel has no
network), and is the only one to write the result. For every code cell it records one status:

    "ok"          ran to its end (its outputs say whether a test passed)
    "timed out"   interrupted after the per-cell limit
    "kernel died" the kernel exited or was killed during the cell (never counts as passed)
    "not run: …"  an earlier cell killed the kernel or would not stop

Outputs are bounded: past `output_limit` bytes per notebook, display and stream outputs are
dropped (one note says so); error outputs are always kept, trimmed, since they decide grades.

`python -m course_lib.grading.run TASK.json RESULT.json` runs one task in a process of its own,
so a grading worker survives whatever happens here.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":
    # jsonschema, under nbformat, imports rfc3987_syntax for a format nbformat never checks, and
    # that builds a grammar: 1.5 s of every task's grading process. Without it, 0.2 s.
    sys.modules.setdefault("rfc3987_syntax", None)

import nbformat  # noqa: E402

from course_lib.grading.demos import SKIP_KEY
from course_lib.grading.sandbox import Limits, Sandbox

OUTPUT_LIMIT_BYTES = 2_000_000  # outputs kept per notebook (figures included)
TRACEBACK_LIMIT = 40  # lines of an error's traceback kept
LINE_LIMIT = 2000  # characters of one traceback line, error message or stderr write
RESULT_LIMIT_BYTES = 200_000_000  # a result file larger than this is not read
SECONDS_KEY = "course_grading_seconds"  # cell metadata of an executed notebook: how long the cell ran
INTERRUPT_GRACE_S = 5  # how long an interrupted cell may take to stop before the kernel is killed


@dataclass
class RunSettings:
    """How to run one notebook (travels to grading workers as JSON)."""

    cell_timeout_s: float = 180
    output_limit: int = OUTPUT_LIMIT_BYTES
    sandbox_kind: str = "none"
    sandbox_hidden: tuple = ()
    sandbox_visible: tuple = ()
    memory_bytes: int = Limits.memory_bytes
    cpu_seconds: int = Limits.cpu_seconds
    file_bytes: int = Limits.file_bytes
    env: dict | None = None  # extra environment for the kernel (e.g. the model cache)
    warm: bool = False  # fork kernels from a preloaded zygote (`course_lib.grading.warm`; bubblewrap only)
    warm_socket: str = ""  # set per task: the zygote that forks this task's kernel
    warm_dir: str = ""  # set per task: where that zygote's tasks keep their scratch folders

    def sandbox(self) -> Sandbox:
        return Sandbox(self.sandbox_kind, hidden=tuple(self.sandbox_hidden), visible=tuple(self.sandbox_visible))

    def limits(self) -> Limits:
        return Limits(self.memory_bytes, self.cpu_seconds, self.file_bytes)


def _kernel_manager(argv: list[str], work: Path):
    """A KernelManager that starts `argv` over Unix sockets in `work`, interrupted by message."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec = KernelSpec(argv=[*argv, "-f", "{connection_file}"], display_name="grading", language="python",
                      interrupt_mode="message")

    class OneSpec(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return spec

    return AsyncKernelManager(
        kernel_name="grading", kernel_spec_manager=OneSpec(), transport="ipc", ip=str(work / "k"),
        connection_file=str(work / "kernel.json"),
    )


def _bounded_client_class():
    from nbclient import NotebookClient

    class BoundedClient(NotebookClient):
        """A NotebookClient that stops keeping outputs past a byte budget (errors always kept)."""

        output_budget = OUTPUT_LIMIT_BYTES
        stderr_budget = 200_000  # characters of stderr kept per notebook (one line per cell is enough)
        truncated_cells: set = set()
        timed_out_cells: set = set()
        current_cell = -1

        async def _async_handle_timeout(self, timeout, cell=None):
            # nbclient interrupts the kernel and goes on; remember which cell it was.
            self.timed_out_cells.add(self.current_cell)
            return await super()._async_handle_timeout(timeout, cell)

        def output(self, outs, msg, display_id, cell_index):
            out = super().output(outs, msg, display_id, cell_index)
            if out is None or not outs or outs[-1] is not out:
                return out
            if out.output_type == "error":
                out.traceback = [str(line)[:LINE_LIMIT] for line in out.traceback[-TRACEBACK_LIMIT:]]
                out.evalue = str(out.evalue)[:LINE_LIMIT]
                out.ename = str(out.ename)[:200]
                return out
            if out.output_type == "stream" and out.name == "stderr":
                # stderr decides a grade (nbgrader scores it as failed): always kept, trimmed.
                if self.stderr_budget <= 0:
                    outs.pop()
                    return None
                out.text = str(out.text)[:LINE_LIMIT]
                self.stderr_budget -= len(out.text)
                return out
            size = len(json.dumps(out))
            if size > self.output_budget:
                outs.pop()
                if cell_index not in self.truncated_cells:
                    self.truncated_cells.add(cell_index)
                    note = nbformat.v4.new_output("stream", name="stdout", text="[output truncated by the grader]\n")
                    outs.append(note)
                return None
            self.output_budget -= size
            return out

    return BoundedClient


def kernel_env(work: Path, extra: dict | None = None) -> dict:
    """The kernel's environment: home and caches in the scratch folder, hub offline, no GUI."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "COURSE_CACHE_DIR")}
    env.update(
        HOME=str(work), TMPDIR=str(work / "tmp"), MPLBACKEND="Agg", MPLCONFIGDIR=str(work / ".mpl"),
        IPYTHONDIR=str(work / ".ipython"), JUPYTER_RUNTIME_DIR=str(work / ".jupyter"),
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
    )
    env.update(extra or {})
    return env


def copy_font_cache(folder: Path) -> None:
    """Matplotlib's font list into `folder` (a kernel's MPLCONFIGDIR), so no kernel rebuilds it (a few seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        for font_list in Path(matplotlib.get_cachedir()).glob("fontlist-*.json"):
            shutil.copy(font_list, folder / font_list.name)
    except Exception:
        pass


def _prepare_work(work: Path, kind: str) -> None:
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    copy_font_cache(work / ".mpl")
    if kind == "nobody":
        from course_lib.grading.sandbox import NOBODY

        for folder in [work, *work.rglob("*")]:
            os.chown(folder, NOBODY, NOBODY)


def execute(
    nb: nbformat.NotebookNode, settings: RunSettings, work: Path, progress: Path | None = None
) -> tuple[nbformat.NotebookNode, dict[int, str]]:
    """Run `nb` top to bottom in a sandboxed kernel in `work`; returns it with outputs, and cell statuses.

    With `progress`, the result so far is written there after every cell, so a run stopped from
    outside still shows which cells ran.
    """
    from jupyter_core.utils import run_sync
    from nbclient.exceptions import DeadKernelError

    _prepare_work(work, settings.sandbox_kind)
    if settings.warm_socket:
        from course_lib.grading.warm import client_argv

        argv = client_argv(settings.warm_socket)
    else:
        argv = settings.sandbox().kernel_argv(work, settings.limits())
    km = _kernel_manager(argv, work)
    client = _bounded_client_class()(
        nb, km=km, timeout=settings.cell_timeout_s, interrupt_on_timeout=True, allow_errors=True,
        error_on_timeout={"ename": "TimeoutError", "evalue": "timed out", "traceback": []},
        startup_timeout=120, iopub_timeout=4, record_timing=False, resources={"metadata": {"path": str(work)}},
    )
    client.output_budget = settings.output_limit
    client.truncated_cells, client.timed_out_cells = set(), set()
    status: dict[int, str] = {}
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    stopped = ""
    try:
        with client.setup_kernel(env=kernel_env(work, settings.env), cwd=str(work)):
            for i in code_cells:
                if stopped:
                    status[i] = f"not run: {stopped}"
                    continue
                if nb.cells[i].metadata.get(SKIP_KEY):
                    status[i] = "skipped: a demonstration no graded cell depends on"
                    continue
                try:
                    client.current_cell = i
                    cell_started = time.monotonic()
                    try:
                        client.execute_cell(nb.cells[i], i)
                    finally:  # kept with the executed notebook: where a notebook's time goes
                        nb.cells[i].metadata[SECONDS_KEY] = round(time.monotonic() - cell_started, 2)
                    status[i] = "ok"
                    if i in client.timed_out_cells:
                        status[i] = "timed out"
                        nb.cells[i].outputs.append(_error_output(
                            "TimeoutError", f"the cell ran longer than {settings.cell_timeout_s:g} s and was interrupted"))
                        if not _responds(client):
                            stopped = f"cell {i} did not stop when interrupted and the kernel was stopped"
                            run_sync(km.shutdown_kernel)(now=True)
                except DeadKernelError:
                    status[i] = "kernel died"
                    nb.cells[i].outputs.append(_error_output("DeadKernelError", "the kernel died while this cell ran"))
                    stopped = f"the kernel died in cell {i}"
                if progress is not None:
                    write_result(progress, nb, status)
    except Exception as err:  # the kernel never started, or the client broke: nothing counts
        reason = f"the grading kernel failed: {type(err).__name__}: {str(err)[:300]}"
        for i in code_cells:
            status.setdefault(i, f"not run: {reason}")
    for i in client.truncated_cells:
        status[i] = status.get(i, "ok") + "; output truncated"
    _kill_leftovers(work)
    return nb, status


def _kill_leftovers(work: Path) -> None:
    """Kill what the kernel started and left running (outside bubblewrap nothing else does): every
    process whose home is this run's scratch folder."""
    import psutil

    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("HOME") == str(work):
                proc.kill()
        except (psutil.Error, OSError):
            continue


def _responds(client) -> bool:
    """After an interrupt: True if the kernel runs a trivial cell (a loop may ignore SIGINT)."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    probe = nbformat.v4.new_code_cell("pass")
    saved = client.timeout, client.interrupt_on_timeout
    client.timeout, client.interrupt_on_timeout = INTERRUPT_GRACE_S, False
    try:
        client.execute_cell(probe, 0, store_history=False)
        return True
    except (CellTimeoutError, DeadKernelError, RuntimeError):
        return False
    finally:
        client.timeout, client.interrupt_on_timeout = saved


def _error_output(ename: str, evalue: str):
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


@dataclass
class RunResult:
    """What came back from running one notebook."""

    notebook: str  # the executed notebook as JSON text ("" if nothing came back)
    status: dict  # code-cell index (as str) -> status
    seconds: float
    failure: str = ""  # why nothing came back, in words
    kernel: str = "cold"  # "warm": forked from a preloaded zygote; "cold": a fresh process


def run_task(nb_json: str, settings: dict, wall_timeout_s: float) -> RunResult:
    """Run one notebook in a grading process of its own with a wall-clock limit (a Dask task).

    With `settings["warm"]` the kernel is forked from this thread's zygote; a zygote that does not
    start or fork leaves this thread on cold kernels. A kernel that never started (a busy or broken
    machine, not the notebook) is tried once more.
    """
    if settings.get("warm"):
        from course_lib.grading import warm

        zygote = warm.usable_for_this_thread(RunSettings(**settings))
        if zygote is not None:
            result = _run_once(nb_json, {**settings, "warm_socket": zygote.socket_path, "warm_dir": str(zygote.tasks)},
                               wall_timeout_s)
            if not never_started(result):
                result.kernel = "warm"
                return result
            warm.give_up_on_this_thread(zygote)
    result = _run_once(nb_json, settings, wall_timeout_s)
    if never_started(result):
        result = _run_once(nb_json, settings, wall_timeout_s)
    return result


def never_started(result: RunResult) -> bool:
    """True when no cell ran because the kernel never started (the machine's fault, not the notebook's)."""
    return bool(result.status) and all(v.startswith("not run: the grading kernel failed") for v in result.status.values())


def _run_once(nb_json: str, settings: dict, wall_timeout_s: float) -> RunResult:
    import subprocess

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cg-") as tmp:
        tmp = Path(tmp)
        task, result = tmp / "task.json", tmp / "result.json"
        task.write_text(json.dumps({"notebook": nb_json, "settings": settings}))
        cmd = [sys.executable, "-m", "course_lib.grading.run", str(task), str(result)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=wall_timeout_s)
            failure = "" if proc.returncode == 0 else f"the grader exited with {proc.returncode}: {_last_line(stderr)}"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            failure = f"timed out: the whole notebook ran longer than {wall_timeout_s:g} s"
        if result.exists() and result.stat().st_size > RESULT_LIMIT_BYTES:
            return RunResult("", {}, time.monotonic() - started, "the run's output was too large to keep")
        if result.exists():
            data = json.loads(result.read_text())
            if not data.get("finished") and not failure:
                failure = "the grader stopped before the last cell"
            return RunResult(data["notebook"], data["status"], time.monotonic() - started, failure)
        return RunResult("", {}, time.monotonic() - started, failure or "the grader wrote no result")


def _kill_group(proc) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no error output"


def main(argv: list[str] | None = None) -> None:
    """`python -m course_lib.grading.run TASK.json RESULT.json`: run one task, write its result."""
    argv = sys.argv[1:] if argv is None else argv
    task = json.loads(Path(argv[0]).read_text())
    settings = RunSettings(**task["settings"])
    nb = nbformat.reads(task["notebook"], as_version=4)
    result_path = Path(argv[1])
    with tempfile.TemporaryDirectory(prefix="cg-k-", dir=settings.warm_dir or None) as work:
        nb, status = execute(nb, settings, Path(work), progress=result_path)
    write_result(result_path, nb, status, finished=True)


def write_result(path: Path, nb: nbformat.NotebookNode, status: dict[int, str], finished: bool = False) -> None:
    """Write the executed notebook and the cell statuses atomically (a reader never sees half a file)."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({
        "notebook": nbformat.writes(nb), "status": {str(k): v for k, v in status.items()}, "finished": finished,
    }))
    partial.replace(path)


if __name__ == "__main__":
    main()

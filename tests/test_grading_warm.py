"""Warm kernels (course_lib.grading.warm): forked from one preloaded process, yet each student's
kernel starts as a fresh one would and finds nothing an earlier student's kernel left behind."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

import nbformat
import pytest

from course_lib.grading import warm
from course_lib.grading.run import RunSettings, run_task
from course_lib.grading.sandbox import choose_sandbox

REPO = Path(__file__).resolve().parent.parent
BUBBLEWRAP = choose_sandbox().kind == "bubblewrap"
pytestmark = pytest.mark.skipif(not BUBBLEWRAP, reason="warm kernels need bubblewrap (`make install` adds it as root)")


@pytest.fixture(scope="module")
def settings():
    from course_lib.models.pretrained import cache_dir

    box = choose_sandbox([REPO, Path(tempfile.gettempdir())])
    yield asdict(RunSettings(sandbox_kind=box.kind, sandbox_hidden=box.hidden, sandbox_visible=box.visible, warm=True,
                             cell_timeout_s=60, env={"COURSE_CACHE_DIR": str(cache_dir().resolve())}))
    warm.stop_all()


def _run(settings: dict, *cells: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    result = run_task(nbformat.writes(nb), settings, 300)
    executed = nbformat.reads(result.notebook, 4)
    texts = ["".join(o.get("text", "") for o in c.outputs if o.get("name") == "stdout") for c in executed.cells]
    errors = [[f"{o.ename}: {o.evalue}" for o in c.outputs if o.output_type == "error"] for c in executed.cells]
    return result, texts, errors


# What a kernel sees of its surroundings (printed as Python literals, read back with eval).
LOOK_AROUND = """
import os, random, torch
from pathlib import Path
others = sorted(int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, 2, os.getpid()))
print(repr({
    'processes': [Path(f'/proc/{p}/cmdline').read_bytes().replace(b'\\0', b' ').decode()[:80] for p in others],
    'tmp': sorted(p for p in os.listdir('/tmp') if not p.startswith('cg-warm-') and not os.path.ismount('/tmp/' + p)),
    'shm': sorted(os.listdir('/dev/shm')),
    'siblings': sorted(p for p in os.listdir('..') if p != os.path.basename(os.getcwd())),
    'home_is_cwd': os.environ['HOME'] == os.getcwd(),
    'draws': (torch.rand(3).tolist(), random.random()),
    'left': [p for p in LEFT_BY_A if os.path.exists(p)],
}))
"""

LEAVE_THINGS_BEHIND = """
import subprocess
subprocess.Popen(['sleep', '600'], start_new_session=True)
subprocess.Popen(['sh', '-c', '(sleep 600 &) ; sleep 600'])
open('/tmp/left_by_a', 'w').write('x')
open('/dev/shm/left_by_a', 'w').write('x')
open('../left_by_a', 'w').write('x')
for elsewhere in LEFT_BY_A[3:]:
    try:
        open(elsewhere, 'w').write('x')
        print('wrote', elsewhere)
    except OSError:
        pass
"""

READ_THE_ZYGOTE = """
try:
    open('/proc/2/mem', 'rb').read(1)
    print('read the zygote')
except OSError as err:
    print('refused:', type(err).__name__)
"""


def test_a_warm_kernel_finds_nothing_an_earlier_student_left(settings):
    # Where a kernel might leave a file: its /tmp, /dev/shm and task folders, then /dev, the model
    # cache and the hidden course folder (read-only, or inside /tmp when the course lies there).
    cache = settings["env"]["COURSE_CACHE_DIR"]
    left = ["/tmp/left_by_a", "/dev/shm/left_by_a", "../left_by_a", "/dev/left_by_a", f"{cache}/left_by_a",
            f"{REPO}/left_by_a"]
    look = f"LEFT_BY_A = {left!r}\n" + LOOK_AROUND
    first, texts_a, errors_a = _run(settings, look, LEAVE_THINGS_BEHIND, READ_THE_ZYGOTE)
    second, texts_b, errors_b = _run(settings, look)
    assert first.kernel == second.kernel == "warm", (first.failure, second.failure)
    assert errors_a == [[], [], []] and errors_b == [[]]
    assert "wrote /dev/" not in texts_a[1] and f"wrote {cache}" not in texts_a[1], texts_a[1]
    a, b = eval(texts_a[0]), eval(texts_b[0])
    assert texts_a[2].strip() == "refused: PermissionError", "a kernel must not read the zygote's memory"
    # Nothing of the first student's kernel is left: no process, no file in /tmp, /dev/shm or next to the task folder.
    assert b["processes"] == [] and b["left"] == [] and b["shm"] == [] and b["siblings"] == [], b
    assert b["tmp"] == a["tmp"], "/tmp holds only the sandbox's own mount points, as for the first kernel"
    assert a["home_is_cwd"] and b["home_is_cwd"]
    # Every child draws its own random numbers, as fresh processes do (not the zygote's stream).
    assert a["draws"][0] != b["draws"][0] and a["draws"][1] != b["draws"][1]


def test_a_kernel_that_kills_the_zygote_ends_only_its_own_run(settings):
    # (the sleep: the sandbox goes down with the zygote a moment after the kill, not at once)
    killer, _, _ = _run(settings, "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(10)",
                        "print('after')")
    assert set(killer.status.values()) == {"kernel died", "not run: the kernel died in cell 0"}
    after, texts, errors = _run(settings, "print(1 + 1)")
    assert after.kernel == "warm" and texts == ["2\n"] and errors == [[]]


def test_the_preloaded_model_is_the_one_load_model_builds(settings):
    """The kernel's first load_model() returns the zygote's instance: same weights, no hooks, eval mode,
    frozen, and the same logits as a model built in the kernel itself."""
    check = """
import torch
from course_lib.models import load_model
torch.set_grad_enabled(False)
first, second = load_model(), load_model()
tokens = first.to_tokens('The Eiffel Tower is in')
same_weights = all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), second.state_dict().values()))
print(repr((first is not second, same_weights, first.training, any(p.requires_grad for p in first.parameters()),
            torch.allclose(first(tokens), second(tokens), atol=1e-5))))
"""
    result, texts, errors = _run(settings, check)
    assert result.kernel == "warm" and errors == [[]]
    assert eval(texts[0]) == (True, True, False, False, True)


def test_the_zygote_refuses_to_run_outside_a_process_namespace():
    """kill(-1) there would reach every process of the user: the zygote exits before preloading."""
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-m", "course_lib.grading.warm", "0", "/nonexistent", "/nonexistent"],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode != 0 and "process namespace of its own" in probe.stderr

"""Measure the numbers reported in the README: model loads, toy training, notebook run, imports.

Run with `make bench` (or `.venv/bin/python benchmarks/run_all.py`). Each measurement runs in a
fresh process so imports and caches are counted as a student would see them. Results are printed
as a Markdown table and written to benchmarks/results/latest.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def timed(code: str, env: dict | None = None) -> float:
    """Wall-clock seconds of `python -c code` in a fresh process (the code prints its own timing)."""
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = []
    rows.append(("import course_lib (+ checks, models)", timed(
        "import time; t=time.perf_counter(); import course_lib.checks, course_lib.models; print(time.perf_counter()-t)"
    ), "s", "-"))
    with tempfile.TemporaryDirectory() as cache:
        env = {"COURSE_CACHE_DIR": cache}
        load = "import time, course_lib.models as m; t=time.perf_counter(); m.load_model(); print(time.perf_counter()-t)"
        rows.append(("load_model(), first load (GGUF -> cache)", timed(load, env), "s", "-"))
        rows.append(("load_model(), cached", timed(load, env), "s", "<= 3 s"))
    rows.append(("train attn-only-2l (3000 steps, 2 threads)", timed(
        "import time, torch; torch.set_num_threads(2); from course_lib.models.training import train_toy; "
        "t=time.perf_counter(); train_toy('attn-only-2l'); print(time.perf_counter()-t)"
    ), "s", "< 60 s"))
    rows.append(("train attn-only-1l (2000 steps, 2 threads)", timed(
        "import time, torch; torch.set_num_threads(2); from course_lib.models.training import train_toy; "
        "t=time.perf_counter(); train_toy('attn-only-1l'); print(time.perf_counter()-t)"
    ), "s", "< 60 s"))
    for nb in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        rows.append((f"execute solutions/{nb.parent.name}/{nb.name} (kernel start to end)", timed(
            "import time, nbformat; from nbclient import NotebookClient; "
            f"nb = nbformat.read({str(nb)!r}, as_version=4); t=time.perf_counter(); "
            f"NotebookClient(nb, timeout=600, kernel_name='python3', resources={{'metadata': {{'path': {str(nb.parent)!r}}}}}).execute(); "
            "print(time.perf_counter()-t)"
        ), "s", "<= 20 s" if nb.name.startswith("00_") else "<= 90 s" if nb.name.startswith("04_") else "about 60 s"))
    early = ROOT / "solutions" / "mech_interp" / "02_early_decoding.ipynb"
    if early.exists():
        # The first run of 02 trains the tuned lens (then it is cached): measure that case too, in a
        # cache folder holding only the converted SmolLM2.
        from course_lib.models.pretrained import smollm2_cache_path

        with tempfile.TemporaryDirectory() as cache:
            shutil.copytree(smollm2_cache_path(), Path(cache) / smollm2_cache_path().name)
            rows.append(("execute 02_early_decoding, tuned lens not cached yet (trains it)", timed(
                "import time, nbformat; from nbclient import NotebookClient; "
                f"nb = nbformat.read({str(early)!r}, as_version=4); t=time.perf_counter(); "
                "NotebookClient(nb, timeout=600, kernel_name='python3').execute(); print(time.perf_counter()-t)",
                {"COURSE_CACHE_DIR": cache},
            ), "s", "<= 120 s"))
    rows.append(("course check (self-check) of the 00_setup release", timed(
        "import time; from course_lib.grading import check_notebook; t=time.perf_counter(); "
        f"check_notebook({str(ROOT / 'notebooks' / 'mech_interp' / '00_setup.ipynb')!r}); print(time.perf_counter()-t)"
    ), "s", "-"))
    shap_code = (
        "import time, torch; from course_lib.models import load_model; from course_lib.shapley import token_shapley; "
        "m = load_model(); p = 'Review: what a great movie, if you have no taste. Sentiment (positive or negative):'; "
        "t = m.to_tokens(p, prepend_bos=True)[0]; pos = m.to_tokens(' positive', prepend_bos=False)[0, 0].item(); "
        "neg = m.to_tokens(' negative', prepend_bos=False)[0, 0].item(); players = PLAYERS; "
        "s = time.perf_counter(); token_shapley(m, t, players, pos, neg, 0); print(time.perf_counter() - s)"
    )
    rows.append(("Baseline Shapley, 6 word players (64 coalitions, batched)", timed(
        shap_code.replace("PLAYERS", "[[3, 4], [5], [6, 7], [8, 9, 10], [11], [12, 13]]")), "s", "-"))
    rows.append(("Baseline Shapley, 11 single-token players (2048 coalitions, batched)", timed(
        shap_code.replace("PLAYERS", "[[i] for i in range(3, 14)]")), "s", "a few s (not met)"))
    lines = ["| measurement | value | goal |", "|---|---|---|"]
    lines += [f"| {name} | {value:.1f} {unit} | {goal} |" for name, value, unit, goal in rows]
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores\n\n{table}\n")


if __name__ == "__main__":
    main()

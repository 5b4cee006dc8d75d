"""JupyterLab for the browser tests: started by `make lab` in a copy of the course, driven by Playwright.

The server runs in a scratch copy of the working tree, so Run All, saving and JupyterLab's
autosave never touch the committed notebooks. It is started by the Makefile's own `lab` target
(on a free loopback port), so the tests see exactly what a student who types `make lab` sees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts" / "browser"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


def chromium_path() -> str:
    """Debian's Chromium (or $CHROMIUM); a clear error naming the fix when there is none."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError(
        "No Chromium found for the browser tests. `make test-browser` installs Debian's `chromium` "
        "package when it runs as root; otherwise run `sudo apt-get install -y chromium`, or set "
        "CHROMIUM=/path/to/chrome. (Playwright's own browser download is not used.)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_course(dest: Path) -> Path:
    """The working tree as git sees it (tracked and new, not ignored), with the venv linked in."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".venv").symlink_to(REPO / ".venv")
    # `make lab` depends on `make install`, which is done: keep make from redoing it in the copy.
    return dest


@dataclass
class LabServer:
    """A running `make lab` in a course copy: its URL, token and log."""

    root: Path
    port: int
    process: subprocess.Popen
    log_path: Path
    token: str = ""
    _workspaces: int = field(default=0, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """A URL on the server with the token, for the first visit of a page."""
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path}{sep}token={self.token}"

    def lab_url(self, path: str) -> str:
        """A JupyterLab URL in a workspace of its own: nothing opened by an earlier test is restored.

        (JupyterLab saves the open tabs on the server; a notebook restored from an earlier test,
        whose kernel was shut down, would start a kernel of its own and compete for the CPU.)
        """
        self._workspaces += 1
        return self.url(f"/lab/workspaces/test-{self._workspaces}/{path.removeprefix('/lab/').lstrip('/')}")

    def api(self, method: str, path: str, body: dict | None = None):
        """Call the Jupyter server's REST API; returns the decoded JSON (or None)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def shut_down_kernels(self) -> None:
        """End every session and kernel (each notebook's kernel holds SmolLM2 in memory)."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.api("GET", "/api/kernels"):
            self.api("DELETE", f"/api/kernels/{kernel['id']}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def start_lab(root: Path, timeout_s: float = 120) -> LabServer:
    """Run `make lab` in `root` on a free port and wait until the server answers."""
    port = free_port()
    log_path = root / "lab.log"
    env = dict(os.environ)
    # A fresh user: no saved workspace or settings from whoever ran JupyterLab on this machine.
    for var, sub in (("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                     ("JUPYTER_RUNTIME_DIR", "runtime")):
        env[var] = str(root / ".lab-state" / sub)
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    process = subprocess.Popen(
        ["make", "--no-print-directory", "-o", "install", "lab", f"PORT={port}"],
        cwd=root, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = LabServer(root, port, process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`make lab` exited with {process.returncode}:\n{server.log()}")
        match = re.search(rf"http://127\.0\.0\.1:{port}/lab\S*\?token=(\w+)", server.log())
        if match:
            server.token = match.group(1)
            try:
                server.api("GET", "/api/status")
                return server
            except OSError:
                pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"JupyterLab did not answer within {timeout_s:.0f} s:\n{server.log()}")


def is_loopback(url: str) -> bool:
    """True for URLs the page may load: this machine, or data and blob URLs made in the page."""
    if url.startswith(("data:", "blob:", "about:")):
        return True
    host = urllib.request.urlparse(url).hostname or ""
    return host in LOOPBACK_HOSTS or f"[{host}]" in LOOPBACK_HOSTS

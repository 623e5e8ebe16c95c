"""Real gate processes for tests: start, wait for /health, stop by PID (whole process group)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(
        ("DB_", "DATABASE_URL", "ADMIN_API_KEY", "API_", "DATA_DIR", "LEASE_", "STORAGE_", "ENABLE_AUTH")
    )
}


class GateProcess:
    def __init__(self, argv: list[str], env: dict[str, str], port: int, cwd: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = cwd / f"gate-{port}-{time.monotonic_ns()}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            # The tests' origins are their own: no fleet budget unless a test sets one.
            env=CLEAN_ENV | {"HOST_RATE_LIMIT": "0", "HOST_CONNECTIONS": "0"} | env,
            cwd=REPO,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gate exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gate not healthy in {timeout}s:\n{self.output()}")

    @staticmethod
    def wait_url(url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{url} not healthy in {timeout}s")

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()
        return self.proc.returncode

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, timeout=30, **kwargs)


def docgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "docgate.cli", *args]


def postgres_running(pgdata: Path) -> bool:
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return any(f"postgres -D {pgdata} " in line + " " for line in out.splitlines())


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@contextlib.contextmanager
def nginx_serving(tmp: Path, http: str, probe: str) -> Iterator[str]:
    """Debian's nginx on a free port of 127.0.0.1, `http` inside its http block (a `server`
    block whose `listen` is `{listen}`), until the block ends; yields its base URL once `probe`
    (a path) answers 200. Skipped where nginx is missing, failed in CI."""
    import pytest

    if not Path(NGINX).exists():
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; `make test` installs it")
        pytest.skip("nginx is not installed (make test installs it when run as root)")
    from conftest import free_port

    port = free_port()
    config = tmp / "origin.conf"
    body = http.replace("{listen}", f"127.0.0.1:{port}")
    config.write_text(f"worker_processes 1;\nevents {{ worker_connections 64; }}\nhttp {{\n{body}\n}}\n")
    pid = tmp / "origin.pid"
    proc = subprocess.Popen(
        [NGINX, "-c", str(config), "-e", str(tmp / "origin-error.log"), "-g", f"daemon off; pid {pid};"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + probe, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not come up"
                time.sleep(0.1)
        yield base
    finally:
        stop_nginx(proc)


def stop_nginx(proc: subprocess.Popen[Any]) -> None:
    """nginx's graceful stop (SIGQUIT: workers finish their requests), killed after 15 s."""
    proc.send_signal(signal.SIGQUIT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)

"""Readiness over SSH: the system ``ssh`` client, retried until a command exits 0 in the guest.

This is testcloud's idea (a VM is ready when it accepts a login) without a helper service:
a thread keeps running ``ssh -p PORT USER@127.0.0.1 -- CMD`` against the port qemu forwards
to the guest's 22, and the supervisor polls its answer. Host keys are not checked (the guest
made them a moment ago) and nothing is written to ``known_hosts``; ``BatchMode`` makes ssh fail
instead of asking for a password.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import ImagekitError

RETRY_SECONDS = 2.0
ATTEMPT_SECONDS = 120.0  # one attempt: the connection and the user's command


@dataclass(frozen=True)
class SshTarget:
    """Who logs in where: ``user`` None and ``identity`` None leave them to ssh's own config."""

    port: int
    command: str
    user: str | None = None
    identity: Path | None = None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for qemu's ``hostfwd`` (which binds it at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_key(directory: Path) -> Path:
    """A fresh ed25519 key pair for one boot; returns the private key (``.pub`` beside it)."""
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise ImagekitError("ssh-keygen is not installed; install openssh-client")
    key = directory / "id_ed25519"
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "imagekit-boot", "-f", str(key)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return key


def ssh_argv(target: SshTarget) -> list[str]:
    client = shutil.which("ssh")
    if client is None:
        raise ImagekitError("ssh is not installed; install openssh-client")
    options = ["BatchMode=yes", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"]
    options += ["ConnectTimeout=10", "LogLevel=ERROR"]
    argv = [client, "-p", str(target.port), "-T"]
    if target.identity is not None:
        argv += ["-i", str(target.identity)]
        options.append("IdentitiesOnly=yes")
    for option in options:
        argv += ["-o", option]
    host = f"{target.user}@127.0.0.1" if target.user else "127.0.0.1"
    return [*argv, host, "--", target.command]


class Prober:
    """Retries the SSH command in a thread; :meth:`answer` is the supervisor's probe."""

    def __init__(self, target: SshTarget) -> None:
        self.argv = ssh_argv(target)
        self.last = "no attempt yet"
        self.output = ""  # what the command printed when it succeeded
        self._done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def answer(self) -> str | None:
        return "ssh: the command exited 0" if self._done.is_set() else None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = subprocess.run(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=ATTEMPT_SECONDS,
                )
            except subprocess.TimeoutExpired:
                self.last = f"ssh did not finish within {ATTEMPT_SECONDS:g} s"
                continue
            if result.returncode == 0:
                self.output = result.stdout.decode("utf-8", "replace")
                self._done.set()
                return
            stderr = result.stderr.decode("utf-8", "replace").strip().splitlines()
            self.last = f"exit {result.returncode}: {stderr[-1] if stderr else '(no message)'}"
            self._stop.wait(RETRY_SECONDS)

    @contextmanager
    def running(self) -> Iterator[Prober]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()

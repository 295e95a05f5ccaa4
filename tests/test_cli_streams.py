"""stdout carries results only; the progress bar is drawn on stderr, and only when it is a TTY.

Each case runs ``python -m imagekit pull`` with stdout and stderr each on its own pseudo-terminal
or pipe, against a throttled loopback server so the bar has time to draw.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO, Upstream
from tests.reliability import figures

FILENAME = "Streams-Cloud-1.qcow2"
ANSI = b"\x1b"
STREAMS = "stdout/stderr layouts (pipe, pty) with only results on stdout"


def _drain(fd: int, into: list[bytes]) -> None:
    """Read ``fd`` to its end; a pty master ends with EIO once the child closes its side."""
    while True:
        try:
            block = os.read(fd, 65536)
        except OSError:
            break
        if not block:
            break
        into.append(block)
    os.close(fd)


def run_on(args: list[str], *, stdout_tty: bool, stderr_tty: bool) -> tuple[int, bytes, bytes]:
    """Run the CLI with each of stdout/stderr on a pty (100 columns) or a pipe; both outputs."""
    ends = []  # (child's end, our end) per stream
    for tty in (stdout_tty, stderr_tty):
        if tty:
            ours, theirs = os.openpty()
            fcntl.ioctl(theirs, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        else:
            ours, theirs = os.pipe()
        ends.append((theirs, ours))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    child = subprocess.Popen(
        [sys.executable, "-m", "imagekit", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=ends[0][0],
        stderr=ends[1][0],
        env={**env, "TERM": "xterm-256color"},
    )
    outputs: list[list[bytes]] = [[], []]
    readers = []
    for (theirs, ours), into in zip(ends, outputs, strict=True):
        os.close(theirs)
        readers.append(threading.Thread(target=_drain, args=(ours, into)))
        readers[-1].start()
    code = child.wait(timeout=120)
    for reader in readers:
        reader.join(timeout=10)
    return code, b"".join(outputs[0]), b"".join(outputs[1])


@pytest.fixture
def pull_args(upstream: Upstream, image_bytes: bytes, tmp_path: Path) -> list[str]:
    upstream.publish(FILENAME, image_bytes)
    upstream.server.throttle(f"/pub/{FILENAME}", len(image_bytes) / 1.5)  # ~1.5 s of progress
    return ["pull", str(upstream.recipe(FILENAME)), "--store", str(tmp_path / "store")]


@pytest.mark.parametrize(
    ("stdout_tty", "stderr_tty"),
    [(False, True), (True, True), (True, False)],
    ids=["stdout-pipe-stderr-pty", "both-ptys", "stdout-pty-stderr-pipe"],
)
def test_stdout_carries_only_the_result(
    pull_args: list[str], stdout_tty: bool, stderr_tty: bool
) -> None:
    code, out, err = run_on(pull_args, stdout_tty=stdout_tty, stderr_tty=stderr_tty)

    assert code == 0, err[-2000:]
    assert ANSI not in out, out[:400]
    lines = out.decode().replace("\r\n", "\n").splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("test-cloud:1 pulled (signed) sha256:")
    assert Path(lines[1]).is_file()
    if stderr_tty:
        assert ANSI in err, "the progress bar belongs on the terminal's stderr"
    else:
        assert err == b""  # no bar into a pipe or a log file
    figures.add(STREAMS)


@pytest.mark.parametrize("stdout_tty", [False, True], ids=["stdout-pipe", "stdout-pty"])
def test_json_on_stdout_parses_with_stderr_on_a_terminal(
    pull_args: list[str], stdout_tty: bool
) -> None:
    code, out, err = run_on([*pull_args, "--json"], stdout_tty=stdout_tty, stderr_tty=True)

    assert code == 0, err[-2000:]
    assert ANSI not in out and ANSI not in err
    result = json.loads(out.decode().replace("\r\n", "\n"))
    assert result["ref"] == "test-cloud:1" and result["cached"] is False
    figures.add(STREAMS)

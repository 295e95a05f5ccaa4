"""A child process that runs one store operation and SIGKILLs itself at a chosen point.

The parent (test_kill.py) starts it as ``python -c "from tests.reliability.crashchild import
main; main()" JSON``. A kill point is either a byte count (the download dies right after the
partial file reaches exactly that many bytes) or a function (``module:Attr.path:before|after``),
so a kill lands deterministically in the download, the commit phase, gc, export, a build
(test_build_kills.py) or a registry push or pull (test_registry_kills.py). The kill is a
real ``kill -9`` of the whole process: no finally blocks, no flushing, no lock release.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pathlib
import signal
import sys
from collections.abc import Callable
from typing import Any


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_byte(limit: int) -> None:
    """Die once the partial download holds exactly ``limit`` bytes."""
    from imagekit.net.partfile import Partial

    original = Partial._write

    def write(self: Partial, fd: int, data: bytes) -> None:
        if self.size + len(data) >= limit:
            original(self, fd, bytes(memoryview(data)[: limit - self.size]))
            die()
        original(self, fd, data)

    Partial._write = write  # type: ignore[method-assign]


def kill_at_blob_byte(limit: int) -> None:
    """Die once a registry pull's partial blob holds at least ``limit`` bytes."""
    from imagekit.oci.download import Partial

    original = Partial.fill

    def fill(self: Partial, read: Callable[[bytearray], int]) -> int:
        n = original(self, read)
        if self.size >= limit:
            die()
        return n

    Partial.fill = fill  # type: ignore[method-assign]


def kill_at_upload_byte(limit: int) -> None:
    """Die once one blob's upload has sent at least ``limit`` bytes, but not all of them: the
    kill lands inside a request body (a PATCH's, or the final PUT's)."""
    from imagekit.oci.upload import _Upload

    original = _Upload._sent

    def sent(self: _Upload, n: int) -> None:
        original(self, n)
        if limit <= self.sent < self.desc.size:
            die()

    _Upload._sent = sent  # type: ignore[method-assign]


def kill_at_call(point: str, nth: int = 1) -> None:
    """Die before or after the ``nth`` call of ``module:Owner.attr`` (``module:func``)."""
    module_name, dotted, when = point.split(":")
    owner: Any = importlib.import_module(module_name)
    *path, name = dotted.split(".")
    for part in path:
        owner = getattr(owner, part)
    original: Callable[..., Any] = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        this = calls  # a call of its own: other threads (segment workers) count on meanwhile
        if this == nth and when == "before":
            die()
        result = original(*args, **kwargs)
        if this == nth and when == "after":
            die()
        return result

    setattr(owner, name, wrapper)


def kill_at_unlink(nth: int) -> None:
    """Die right after the ``nth`` file removal (gc's sweep)."""
    original = pathlib.Path.unlink
    calls = 0

    def unlink(self: pathlib.Path, missing_ok: bool = False) -> None:
        nonlocal calls
        original(self, missing_ok=missing_ok)
        calls += 1
        if calls == nth:
            die()

    pathlib.Path.unlink = unlink  # type: ignore[method-assign]


def run(spec: dict[str, Any]) -> None:
    from imagekit.image import Image
    from imagekit.net.transport import Transport
    from imagekit.recipe import load_recipe
    from imagekit.store import Store

    if spec.get("byte") is not None:
        kill_at_byte(int(spec["byte"]))
    if spec.get("blob_byte") is not None:
        kill_at_blob_byte(int(spec["blob_byte"]))
    if spec.get("upload_byte") is not None:
        kill_at_upload_byte(int(spec["upload_byte"]))
    if spec.get("piece"):  # smaller pieces of a request body: a small chunk has several
        from imagekit.oci import wire

        wire.PIECE = int(spec["piece"])
    if spec.get("call"):
        kill_at_call(spec["call"], int(spec.get("nth", 1)))
    if spec.get("unlink"):
        kill_at_unlink(int(spec["unlink"]))
    if spec.get("segment"):  # smaller segments: a small image has several
        from imagekit.net import segments

        segments.SEGMENT_SIZE = int(spec["segment"])
    # one connection unless asked: the byte-offset kills follow one stream
    store = Store(pathlib.Path(spec["store"]), connections=int(spec.get("connections", 1)))
    op = spec["op"]
    if op == "pull":
        store.pull(load_recipe(spec["recipe"]), transport=Transport(backoff=0.01))
    elif op == "gc":
        store.gc(remove_partial=bool(spec.get("partial")))
    elif op == "export":
        Image.load(store, spec["ref"]).export(pathlib.Path(spec["dest"]), force=True)
    elif op == "build":
        store.build(load_recipe(spec["recipe"]), tag=spec.get("tag"))
    elif op == "push":
        store.push(
            spec["ref"],
            spec["target"],
            chunk_size=int(spec.get("chunk", 1 << 20)),
            transport=Transport(backoff=0.01),
        )
    elif op == "pull-oci":
        store.pull(spec["source"], transport=Transport(backoff=0.01))
    else:
        raise SystemExit(f"unknown op {op!r}")


def main() -> None:
    run(json.loads(sys.argv[1]))

"""One blob up to a registry: mounted from another repository if one holds it, else a chunked
upload that resumes.

An upload's URL is kept in ``tmp/push-<id>.part.json`` after every chunk, so a push killed
between chunks asks the registry how much it holds and sends only the rest; a registry that
forgot the upload (or holds a torn chunk) gets the blob again from the start. The last (or
only) chunk is the body of the ``PUT ?digest=`` that closes the upload: a blob of one chunk is
POST + PUT, the two requests of a monolithic upload.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable
from typing import IO

from imagekit.core import atomic
from imagekit.core.digest import hexpart, identity
from imagekit.errors import FetchError
from imagekit.net.transport import Transient
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.registry import RangeMismatch, Registry
from imagekit.oci.wire import FileChunk
from imagekit.progress import Meter

_HINTS_MAX = 20000


class MountHints:
    """Which repository of a registry last held each blob, so a push can mount instead of send.

    A hint is only a hint: a wrong one costs one refused mount and the blob is uploaded.
    """

    def __init__(self, layout: Layout, host: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", host)
        self.layout = layout
        self.path = layout.cache_dir / "registry" / f"{safe}.json"

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def get(self, digest: str) -> str | None:
        return self._load().get(digest)

    def remember(self, digests: Iterable[str], repository: str) -> None:
        data = self._load()
        for digest in digests:
            data.pop(digest, None)
            data[digest] = repository
        kept = dict(list(data.items())[-_HINTS_MAX:])
        with contextlib.suppress(OSError):  # a lost hint costs an upload, never correctness
            self.layout.access.make_dir(self.path.parent)
            mode = self.layout.access.file_mode
            atomic.replace_file(self.path, json.dumps(kept).encode(), mode=mode)


def push_blob(
    layout: Layout,
    registry: Registry,
    repository: str,
    desc: Descriptor,
    hint: str | None,
    chunk_size: int,
    meter: Meter,
) -> tuple[str, int]:
    """Make ``repository`` hold ``desc``: ("skipped" | "mounted" | "uploaded", bytes sent).

    A lock per registry, repository and blob keeps two pushes off one upload session.
    """
    upload = _Upload(layout, registry, repository, desc, chunk_size, meter)
    with layout.digest_lock(upload.sidecar.name.removesuffix(".part.json")):
        if registry.blob_size(repository, desc.digest) is not None:
            upload.forget()  # a killed push may have finished it before forgetting the upload
            return "skipped", 0
        location = None
        if hint is not None and hint != repository:
            location = registry.mount(repository, desc.digest, hint)
            if location is None:
                upload.forget()
                return "mounted", 0
        return "uploaded", upload.run(location)


class _Upload:
    """A chunked upload (POST, PATCH per chunk but the last, PUT ?digest= with the last) that
    picks up where a killed one stopped."""

    def __init__(
        self,
        layout: Layout,
        registry: Registry,
        repository: str,
        desc: Descriptor,
        chunk_size: int,
        meter: Meter,
    ) -> None:
        self.registry, self.repository, self.desc = registry, repository, desc
        self.path = layout.blob_path(desc.digest)
        self.chunk_size, self.meter = max(1, chunk_size), meter
        key = hexpart(identity([registry.host, repository, desc.digest]))[:32]
        self.sidecar = layout.tmp_dir / f"push-{key}.part.json"
        self.mode = layout.access.file_mode
        self.location: str | None = None
        self.offset = self.sent = self.restarts = 0
        self.in_chunk = 0  # bytes of the chunk under way sent so far (progress)
        self.unsure = False  # the registry may hold more or less than ``offset``: ask first

    def run(self, location: str | None) -> int:
        """Upload the blob; returns the bytes sent (less than its size after a resume)."""
        saved = self._saved()
        self.location, self.unsure = (saved, True) if saved else (location, False)
        url = self.registry.url(self.repository, "blobs", "uploads/")
        with self.path.open("rb") as f:
            self.registry.transport.retrying(url, lambda: self._attempt(f), lambda: self.offset)
        self.forget()
        return self.sent

    def forget(self) -> None:
        """The registry holds the blob: no upload of it is left to resume."""
        self.sidecar.unlink(missing_ok=True)
        self.meter.update(self.desc.size, final=True)

    def _attempt(self, f: IO[bytes]) -> None:
        location = self._sync()
        self.unsure = True  # until this attempt ends well, a retry must ask the registry first
        while self.desc.size - self.offset > self.chunk_size:
            self.in_chunk = 0
            chunk = FileChunk(f, self.offset, self.chunk_size)
            try:
                location = self.registry.patch(self.repository, location, chunk, sent=self._sent)
            except RangeMismatch:
                raise Transient("the registry holds a different part of the upload") from None
            self.location = location
            self.offset += self.chunk_size
            self._save()
        self.in_chunk = 0
        last = FileChunk(f, self.offset, self.desc.size - self.offset)
        try:
            self.registry.finish_upload(
                self.repository, location, self.desc.digest, last, sent=self._sent
            )
        except RangeMismatch:
            self._restart()
        self.offset = self.desc.size
        self.unsure = False

    def _sync(self) -> str:
        """The upload to continue, at the offset the registry holds; a new one if it has none."""
        if self.location is not None and self.unsure:
            held = self.registry.upload_offset(self.repository, self.location)
            if held is None or held > self.desc.size:
                self.location = None
            else:
                self.offset = held
        if self.location is None:
            self.location = self.registry.start_upload(self.repository)
            self.offset = 0
            self._save()
        return self.location

    def _restart(self) -> None:
        """The registry's copy does not hash right (a torn chunk): send the blob once more."""
        self.restarts += 1
        if self.restarts > 1:
            raise FetchError(
                f"{self.registry.host} did not accept {self.desc.digest} after two full "
                "uploads: check the registry's storage and logs"
            )
        self.location = None
        self.sidecar.unlink(missing_ok=True)
        raise Transient("the registry's copy of the upload did not match; starting it again")

    def _sent(self, n: int) -> None:
        self.sent += n
        self.in_chunk += n
        self.meter.update(min(self.offset + self.in_chunk, self.desc.size))

    def _saved(self) -> str | None:
        try:
            data = json.loads(self.sidecar.read_bytes())
        except (OSError, ValueError):
            return None
        location = data.get("location") if isinstance(data, dict) else None
        return location if isinstance(location, str) and location else None

    def _save(self) -> None:
        data = json.dumps({"location": self.location, "digest": self.desc.digest}).encode()
        try:
            atomic.replace_file(self.sidecar, data, mode=self.mode)
        except OSError as exc:
            raise FetchError(f"cannot write {self.sidecar}: {exc.strerror or exc}") from None

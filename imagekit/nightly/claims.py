"""Claims: builders started at the same moment on one registry build each input key once.

Before building a key, a builder pushes a small artifact (its id, the time, a lease) to the
key's claim tag, waits a moment and reads the tag again: the claim found there decides who
builds. Registries have no compare-and-swap, so two claims pushed within the same instant both
land and the last one wins for everyone who re-reads after it; at worst a key is built twice
(the same image: builds are deterministic by key, publishing is idempotent), never zero times,
since an expired claim (a builder that died, or failed and released it) is taken over. A
builder renews its claim while it builds, so the lease bounds only how long a dead one's holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from imagekit.errors import FetchError, ImagekitError, VerificationError
from imagekit.oci.media import (
    CLAIM_BUILDER_ANNOTATION,
    CLAIM_LEASE_ANNOTATION,
    CREATED_ANNOTATION,
    MEDIA_CLAIM,
    MEDIA_EMPTY,
    MEDIA_MANIFEST,
)
from imagekit.oci.registry import Registry

_T = TypeVar("_T")
EMPTY = b"{}"  # the OCI empty descriptor's content
LEASE = 1800.0  # seconds a claim holds unless renewed (every quarter lease while building)
SETTLE = 1.0  # seconds between pushing a claim and reading back who holds the tag


def builder_id() -> str:
    """This builder's id: host, process and a random part (two runs never share one)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def rotated(items: Sequence[_T], builder: str) -> list[_T]:
    """``items`` begun at a place of ``builder``'s own: two builders start on different ones."""
    if not items:
        return []
    start = int.from_bytes(hashlib.sha256(builder.encode()).digest()[:8], "big") % len(items)
    return [*items[start:], *items[:start]]


@dataclass(frozen=True)
class Claim:
    """Who claimed a key tag, when (seconds since the epoch) and for how long."""

    builder: str
    created: float
    lease: float

    def live(self, now: float) -> bool:
        return now < self.created + self.lease


class Claims:
    """One builder's claims in ``repository`` of ``registry``."""

    def __init__(
        self,
        registry: Registry,
        repository: str,
        builder: str,
        *,
        lease: float = LEASE,
        settle: float = SETTLE,
    ) -> None:
        self.registry, self.repository, self.builder = registry, repository, builder
        self.lease, self.settle = lease, settle
        self._empty: str | None = None  # the empty blob's digest, once the registry holds it
        self._uploading = threading.Lock()  # -j builds of one builder upload it once

    def read(self, tag: str) -> Claim | None:
        """The claim at ``tag``; None if there is none or what is there is no claim."""
        if self.registry.manifest_digest(self.repository, tag) is None:
            return None
        try:
            manifest = self.registry.get_manifest(self.repository, tag).json()
            notes = manifest.get("annotations") or {}
            created = datetime.fromisoformat(notes[CREATED_ANNOTATION]).timestamp()
            return Claim(
                notes[CLAIM_BUILDER_ANNOTATION], created, float(notes[CLAIM_LEASE_ANNOTATION])
            )
        except (FetchError, VerificationError, KeyError, TypeError, ValueError, AttributeError):
            return None  # deleted meanwhile, or not a claim: nobody holds the tag

    def held_elsewhere(self, tag: str) -> Claim | None:
        """Another builder's claim at ``tag`` that has not expired, if there is one."""
        claim = self.read(tag)
        if claim is None or claim.builder == self.builder or not claim.live(time.time()):
            return None
        return claim

    def take(self, tag: str) -> bool:
        """Claim ``tag`` unless another builder holds it; True when, read back, it is ours."""
        self.empty()  # before the read: between read and push, as little time as can be
        started = time.monotonic()
        if self.held_elsewhere(tag) is not None:
            return False
        self.push(tag, self.builder, self.lease)
        # Wait at least as long as our read and push took: a claim another builder read as
        # free meanwhile lands within that time, and then the last one is what both read.
        time.sleep(max(self.settle, time.monotonic() - started))
        claim = self.read(tag)
        return claim is not None and claim.builder == self.builder

    def may_build(self, tag: str) -> bool:
        """:meth:`take`, but a registry that refuses claims lets us build: a claim saves work,
        it never stops a build."""
        try:
            return self.take(tag)
        except ImagekitError:
            return True

    def wait(
        self, tag: str, published: Callable[[], bool], cancelled: threading.Event, poll: float
    ) -> bool | None:
        """Poll, as long as another builder's claim on ``tag`` holds, until ``published()``:
        True then; False once this builder took the claim (expired, released); None when
        ``cancelled``."""
        while not cancelled.is_set():
            if published():
                return True
            if self.take(tag):
                return False
            time.sleep(poll)
        return None

    @contextlib.contextmanager
    def renewed(self, tag: str) -> Iterator[None]:
        """Keep holding ``tag`` while the body runs (a build longer than the lease): the claim
        is pushed again with a fresh time every quarter lease, until another builder's claim is
        found there (it builds: ours would hide its claim). Best effort, like every claim."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease / 4):
                with contextlib.suppress(ImagekitError):
                    if self.held_elsewhere(tag) is not None:
                        return
                    self.push(tag, self.builder, self.lease)

        thread = threading.Thread(target=renew, name=f"renew {tag}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()  # a renewal in flight lands before a release that follows

    def release(self, tag: str) -> None:
        """Give ``tag`` up (the build failed): a claim of ours that has already expired. Best
        effort: if the registry refuses it, the claim expires with its lease."""
        with contextlib.suppress(ImagekitError):
            self.push(tag, self.builder, 0.0)

    def empty(self) -> str:
        """The digest of the empty blob claims refer to, uploaded once."""
        with self._uploading:
            if self._empty is None:
                self._empty = self.registry.put_small_blob(self.repository, EMPTY)
            return self._empty

    def push(self, tag: str, builder: str, lease: float, created: float | None = None) -> str:
        """Put a claim at ``tag`` (any ``builder``'s: a test plays a dead one); its digest."""
        empty = {"mediaType": MEDIA_EMPTY, "digest": self.empty(), "size": len(EMPTY)}
        when = datetime.fromtimestamp(time.time() if created is None else created, UTC)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "artifactType": MEDIA_CLAIM,
            "config": empty,
            "layers": [empty],
            "annotations": {
                CLAIM_BUILDER_ANNOTATION: builder,
                CLAIM_LEASE_ANNOTATION: str(lease),
                CREATED_ANNOTATION: when.isoformat(),
            },
        }
        body = json.dumps(manifest, sort_keys=True).encode()
        return self.registry.put_manifest(self.repository, tag, body, MEDIA_MANIFEST)

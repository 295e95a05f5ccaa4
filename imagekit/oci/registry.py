"""A thin client of the OCI distribution API, on imagekit's one HTTP transport.

Why not a library: oras-py reads no containers auth.json and has no referrers, and its push
reads a whole layer into memory; copying by digest needs a dozen endpoints, written here on
:class:`imagekit.net.transport.Transport` (its session, timeouts and retry policy). Bodies
stream in chunks both ways, so memory stays bounded whatever the layer's size.

Plain HTTP is used for loopback registries (127.0.0.1, localhost, ::1) or with ``insecure``;
https otherwise.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urljoin

from imagekit.core.digest import sha256_bytes
from imagekit.errors import FetchError, VerificationError
from imagekit.net.transport import HEADERS, Transport, content_length
from imagekit.oci.auth import Authenticator, Credentials, is_loopback
from imagekit.oci.media import MANIFEST_MEDIA
from imagekit.oci.wire import FileChunk, error_text, fail, read_capped, with_query

if TYPE_CHECKING:
    import requests

MANIFEST_MAX = 4 << 20  # the distribution spec's limit for a manifest body
BLOB_SETTLE = (0.1, 0.3, 1.0)  # seconds between asks while a manifest's blob is mid-commit
_RANGE = re.compile(r"(?:bytes=)?0-(\d+)")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as the registry served it: the exact bytes, their digest and type."""

    body: bytes
    digest: str
    media_type: str

    def json(self) -> dict[str, Any]:
        try:
            obj = json.loads(self.body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise VerificationError(f"manifest {self.digest} is not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise VerificationError(f"manifest {self.digest} is not a JSON object")
        return obj


class DeleteRefused(FetchError):
    """The registry does not allow deleting manifests (its configuration, not this request)."""


class RangeMismatch(Exception):
    """The registry holds a different amount of an upload than the client sent (HTTP 416)."""


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


class Registry:
    """The distribution endpoints of one registry host, through one transport and one login."""

    def __init__(
        self,
        host: str,
        *,
        transport: Transport | None = None,
        insecure: bool = False,
        credentials: Credentials | None = None,
        repository: str | None = None,
    ) -> None:
        self.host = host
        self.transport = transport or Transport()
        scheme = "http" if insecure or is_loopback(host) else "https"
        self.base = f"{scheme}://{host}/v2/"
        self.auth = Authenticator(
            host,
            self.transport,
            insecure=insecure,
            credentials=credentials,
            repository=repository,
        )

    # --- requests ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        scopes: Sequence[str],
        *,
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        stream: bool = True,
    ) -> requests.Response:
        """One request, answered once more if the registry asks for credentials first.

        ``body`` makes a fresh request body, since a 401 means sending it again.
        """
        for attempt in range(2):
            resp = self.transport.session.request(
                method,
                url,
                headers={**HEADERS, **(headers or {}), **self.auth.headers(url, scopes)},
                data=body() if body else None,
                stream=stream,
                timeout=self.transport.timeout,
            )
            if resp.status_code != 401:
                return resp
            resp.close()
            if attempt:
                raise self.auth.refused(resp)
            self.auth.answer(resp, scopes)
        raise AssertionError("unreachable")

    def url(self, repository: str, *path: str, query: dict[str, str] | None = None) -> str:
        url = self.base + repository + "/" + "/".join(path)
        return url + ("?" + urlencode(query) if query else "")

    def retrying(self, url: str, attempt: Callable[[], _T]) -> _T:
        """``attempt`` under the transport's retry policy (server trouble, dropped connections)."""
        return self.transport.retrying(url, attempt)

    # --- manifests -----------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/: proves the address and, once answered, the credentials."""
        url = self.base

        def once() -> None:
            with self.request("GET", url, []) as resp:
                if resp.status_code != 200:
                    fail(resp, f"{self.host} is not an OCI registry (GET /v2/)")

        self.retrying(url, once)

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest ``reference`` names in ``repository``, or None if there is none."""
        url = self.url(repository, "manifests", reference)

        def once() -> str | None:
            headers = {"Accept": ", ".join(MANIFEST_MEDIA)}
            with self.request("HEAD", url, [pull_scope(repository)], headers=headers) as resp:
                if resp.status_code == 404:
                    return None
                if resp.status_code != 200:
                    fail(resp, f"cannot look up {repository}:{reference} on {self.host}")
                digest = resp.headers.get("Docker-Content-Digest")
            return digest if digest else self.get_manifest(repository, reference).digest

        return self.retrying(url, once)

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest's exact bytes, checked against the digest asked for or announced."""
        url = self.url(repository, "manifests", reference)
        return self.retrying(url, lambda: self._get_manifest_once(url, repository, reference))

    def _get_manifest_once(self, url: str, repository: str, reference: str) -> Manifest:
        headers = {"Accept": ", ".join(MANIFEST_MEDIA)}
        with self.request("GET", url, [pull_scope(repository)], headers=headers) as resp:
            if resp.status_code == 404:
                raise FetchError(
                    f"no manifest {reference} in {self.host}/{repository}: check the "
                    "repository and tag (was it pushed?)"
                )
            if resp.status_code != 200:
                fail(resp, f"cannot get manifest {repository}:{reference} from {self.host}")
            body = read_capped(resp, MANIFEST_MAX, f"manifest {repository}:{reference}")
            announced = resp.headers.get("Docker-Content-Digest")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        digest = sha256_bytes(body)
        expected = reference if reference.startswith("sha256:") else announced
        if expected and expected != digest:
            raise VerificationError(
                f"the manifest {self.host}/{repository}:{reference} hashes to {digest}, not "
                f"{expected}: the registry served other bytes than it names; nothing was stored"
            )
        return Manifest(body, digest, media_type)

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Store ``body`` as ``reference`` (a tag or its own digest); returns its digest."""
        url = self.url(repository, "manifests", reference)

        def once() -> str:
            headers = {"Content-Type": media_type}
            scopes = [push_scope(repository)]
            with self.request("PUT", url, scopes, headers=headers, body=lambda: body) as resp:
                if resp.status_code not in (200, 201):
                    fail(resp, f"{self.host} refused manifest {repository}:{reference}")
            return sha256_bytes(body)

        for pause in BLOB_SETTLE:
            try:
                return self.retrying(url, once)
            except FetchError as exc:
                if "MANIFEST_BLOB_UNKNOWN" not in str(exc):
                    raise
            # Another client committing the same blob at this instant (two builders' equal
            # claim blobs, say) leaves it briefly unknown to the registry: ask again shortly.
            time.sleep(pause)
        return self.retrying(url, once)

    def tags(self, repository: str, *, page: int = 100) -> list[str]:
        """Every tag of ``repository``, following the registry's pages (``?n=&last=``).

        The next page is the one the ``Link`` header names, else the page after the last tag
        of a full one; a repository that does not exist has no tags.
        """
        found: list[str] = []
        url: str | None = self.url(repository, "tags", "list", query={"n": str(page)})
        while url is not None:
            batch, url = self.retrying(url, partial(self._tags_page, url, repository, page))
            found.extend(batch)
        return found

    def _tags_page(self, url: str, repository: str, page: int) -> tuple[list[str], str | None]:
        with self.request("GET", url, [pull_scope(repository)]) as resp:
            if resp.status_code == 404:
                return [], None
            if resp.status_code != 200:
                fail(resp, f"cannot list the tags of {self.host}/{repository}")
            body = read_capped(resp, MANIFEST_MAX, f"the tag list of {repository}")
            link = resp.links.get("next", {}).get("url")
        try:
            tags = json.loads(body).get("tags") or []
        except (ValueError, AttributeError):
            raise FetchError(
                f"{self.host} sent a tag list of {repository} that is not JSON"
            ) from None
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise FetchError(f"{self.host} sent a malformed tag list of {repository}")
        if link:
            return tags, urljoin(url, link)
        if tags and len(tags) == page:  # a registry that pages without a Link header
            query = {"n": str(page), "last": tags[-1]}
            return tags, self.url(repository, "tags", "list", query=query)
        return tags, None

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """DELETE a manifest by digest (every tag naming it goes with it); False if it was gone.

        A registry that does not allow deletes (distribution's ``storage.delete.enabled`` off:
        HTTP 405 UNSUPPORTED) raises :class:`DeleteRefused`.
        """
        url = self.url(repository, "manifests", digest)

        def once() -> bool:
            with self.request("DELETE", url, [push_scope(repository)]) as resp:
                if resp.status_code == 404:
                    return False
                if resp.status_code == 405:
                    raise DeleteRefused(
                        f"{self.host} does not allow deleting manifests (HTTP 405"
                        f"{error_text(resp)}); enable deletes on the registry "
                        "(distribution: storage.delete.enabled: true)"
                    )
                if resp.status_code not in (200, 202):
                    fail(resp, f"{self.host} refused to delete {repository}@{digest}")
            return True

        return self.retrying(url, once)

    # --- blobs ---------------------------------------------------------------------------

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of a blob the repository holds, or None when it has none."""
        url = self.url(repository, "blobs", digest)

        def once() -> int | None:
            with self.request("HEAD", url, [pull_scope(repository)]) as resp:
                if resp.status_code == 404:
                    return None
                if resp.status_code != 200:
                    fail(resp, f"cannot look up blob {digest} on {self.host}")
                return content_length(resp)

        return self.retrying(url, once)

    def mount(self, repository: str, digest: str, source: str) -> str | None:
        """Link a blob ``source`` holds into ``repository``: None when done, else an upload URL.

        A registry that cannot mount starts an ordinary upload instead (HTTP 202).
        """
        url = self.url(repository, "blobs", "uploads/", query={"mount": digest, "from": source})
        scopes = [push_scope(repository), pull_scope(source)]

        def once() -> str | None:
            with self.request("POST", url, scopes, body=lambda: b"") as resp:
                if resp.status_code == 201:
                    return None
                if resp.status_code != 202:
                    fail(resp, f"{self.host} refused to mount {digest} from {source}")
                return self._location(resp, url)

        return self.retrying(url, once)

    def start_upload(self, repository: str) -> str:
        url = self.url(repository, "blobs", "uploads/")

        def once() -> str:
            with self.request("POST", url, [push_scope(repository)], body=lambda: b"") as resp:
                if resp.status_code != 202:
                    fail(resp, f"{self.host} refused an upload to {repository}")
                return self._location(resp, url)

        return self.retrying(url, once)

    def upload_offset(self, repository: str, location: str) -> int | None:
        """How many bytes of an upload the registry holds; None if it forgot the upload."""
        with self.request("GET", location, [push_scope(repository)]) as resp:
            if resp.status_code in (400, 404):  # unknown or invalidated upload session
                return None
            if resp.status_code != 204:
                fail(resp, f"cannot ask {self.host} about an upload")
            match = _RANGE.fullmatch(resp.headers.get("Range", "").strip())
        # Registries answer "0-0" for an empty upload (an end offset cannot be -1).
        return 0 if match is None or match[1] == "0" else int(match[1]) + 1

    def patch(
        self, repository: str, location: str, chunk: FileChunk, *, sent: Callable[[int], None]
    ) -> str:
        """Send one chunk of an upload; returns the upload's next URL. Not retried here."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{chunk.offset}-{chunk.offset + chunk.length - 1}",
        }
        chunk.sent = sent
        with self.request(
            "PATCH", location, [push_scope(repository)], headers=headers, body=lambda: chunk
        ) as resp:
            if resp.status_code == 416:
                raise RangeMismatch
            if resp.status_code != 202:
                fail(resp, f"{self.host} refused part of an upload to {repository}")
            return self._location(resp, location)

    def finish_upload(
        self,
        repository: str,
        location: str,
        digest: str,
        chunk: FileChunk,
        *,
        sent: Callable[[int], None],
    ) -> None:
        """Send the upload's last (or only) chunk as the body of the PUT that closes it, the
        registry checking that what it then holds hashes to ``digest``. Not retried here.

        One request fewer per blob than PATCH + empty PUT, and a blob of one chunk goes up as
        POST + PUT, as the distribution spec's monolithic upload does.
        """
        url = with_query(location, {"digest": digest})
        headers = {"Content-Type": "application/octet-stream"}
        chunk.sent = sent
        body = chunk if chunk.length else b""  # requests sends an empty iterable chunked
        with self.request(
            "PUT", url, [push_scope(repository)], headers=headers, body=lambda: body
        ) as resp:
            if resp.status_code != 201:
                if resp.status_code in (400, 404, 416):  # torn, forgotten or refused: again
                    raise RangeMismatch
                fail(resp, f"{self.host} refused to finish the upload of {digest}")

    def put_small_blob(self, repository: str, data: bytes) -> str:
        """Make ``repository`` hold the few bytes ``data`` (one POST, one PUT); their digest."""
        digest = sha256_bytes(data)
        if self.blob_size(repository, digest) is not None:
            return digest
        location = self.start_upload(repository)
        url = with_query(location, {"digest": digest})
        headers = {"Content-Type": "application/octet-stream"}
        scopes = [push_scope(repository)]
        with self.request("PUT", url, scopes, headers=headers, body=lambda: data) as resp:
            if resp.status_code != 201:
                fail(resp, f"{self.host} refused the blob {digest}")
        return digest

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> requests.Response:
        """A streamed GET of a blob from ``offset``; the caller checks the status and closes."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url = self.url(repository, "blobs", digest)
        return self.request("GET", url, [pull_scope(repository)], headers=headers)

    def _location(self, resp: requests.Response, url: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise FetchError(f"{self.host} started an upload without a Location header")
        return urljoin(url, location)

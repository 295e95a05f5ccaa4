"""The one HTTP transport: a requests Session with imagekit's headers, timeouts, retries and caps.

Every request imagekit makes (images, checksum files, signatures, upstream metadata, and later
registries) goes through a :class:`Transport`, so the User-Agent, ``Accept-Encoding: identity``
(the bytes hashed must be the file's bytes, never a decoded body), timeouts, the retry policy and
the size cap on small files are decided here once. ``file://`` URLs are read locally.

requests is imported on first use: a cache-hit pull never needs it.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar
from urllib.parse import urlsplit
from urllib.request import url2pathname

from imagekit._version import __version__
from imagekit.config import MAX_CONNECTIONS
from imagekit.core.capped import EVIDENCE_MAX, read_capped
from imagekit.errors import FetchError

if TYPE_CHECKING:
    import requests

_T = TypeVar("_T")

HEADERS = {"User-Agent": f"imagekit/{__version__}", "Accept-Encoding": "identity"}
SMALL_FILE_MAX = EVIDENCE_MAX  # checksum files, signatures, metadata: larger is not one of those
_MAX_BACKOFF = 30.0
# Connections kept per host: a segmented download uses up to MAX_CONNECTIONS at once.
POOL_SIZE = MAX_CONNECTIONS
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Transient(Exception):
    """A failure worth retrying: a server hiccup, a short body, or an object that changed."""


@dataclass(frozen=True)
class Small:
    """A small file's body and what the server said about it."""

    body: bytes
    url: str  # the final URL, after redirects: what the bytes really came from
    status: int  # 200, or 304 when the caller sent validators and nothing changed
    etag: str | None = None
    last_modified: str | None = None


@functools.cache
def _transient() -> tuple[type[BaseException], ...]:
    """Failures worth retrying; a function so that requests loads only when a request is made."""
    import requests
    import urllib3.exceptions

    return (
        Transient,
        requests.ConnectionError,  # refused, reset, DNS, connect timeout
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.ProtocolError,  # reset or short body while streaming the raw body
        urllib3.exceptions.ReadTimeoutError,
        urllib3.exceptions.SSLError,  # TLS framing broken mid-body: a cut connection
    )


class Transport:
    """One connection pool and one retry policy; an instance serves a whole pull or build."""

    def __init__(
        self,
        *,
        retries: int = 5,
        backoff: float = 0.5,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        session: requests.Session | None = None,
    ) -> None:
        self.retries = retries
        self.backoff = backoff
        self.timeout = (connect_timeout, read_timeout)
        self._session = session

    @property
    def session(self) -> requests.Session:
        """Created on first use, so that a run which makes no request never imports requests."""
        if self._session is None:
            import requests
            import requests.adapters

            session = requests.Session()
            for prefix in ("http://", "https://"):
                adapter = requests.adapters.HTTPAdapter(pool_maxsize=POOL_SIZE)
                session.mount(prefix, adapter)
            self._session = session
        return self._session

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> requests.Response:
        """A streamed GET with imagekit's headers; the caller reads (and closes) the body.

        ``verify`` is passed on explicitly: requests would otherwise let $REQUESTS_CA_BUNDLE
        override the CA file of a Session the caller configured.
        """
        session = self.session
        return session.get(
            url,
            headers={**HEADERS, **(headers or {})},
            stream=True,
            timeout=self.timeout,
            verify=session.verify,
        )

    def retrying(
        self,
        url: str,
        attempt: Callable[[], _T],
        progress_made: Callable[[], int] = lambda: 0,
        kept: Path | None = None,
    ) -> _T:
        """Run ``attempt`` until it succeeds; only failures that made no progress count.

        ``progress_made`` says how many bytes are safe on disk (a resumable download), so a
        connection that keeps dropping while data still arrives is not given up on.
        """
        import requests
        import urllib3.exceptions

        failures = attempts = 0
        while True:
            before = progress_made()
            attempts += 1
            try:
                return attempt()
            except requests.exceptions.SSLError as exc:
                raise FetchError(
                    f"TLS error talking to {url}: {exc}; check the mirror's certificate "
                    "and the system CA certificates"
                ) from exc
            except _transient() as exc:
                failures = 1 if progress_made() > before else failures + 1
                if failures > self.retries:
                    note = (
                        f"; the partial download in {kept} is kept and will resume"
                        if kept and progress_made()
                        else ""
                    )
                    raise FetchError(
                        f"could not download {url} after {attempts} attempts ({exc}); "
                        f"check the network or the mirror and run again{note}"
                    ) from exc
                time.sleep(min(self.backoff * 2 ** (failures - 1), _MAX_BACKOFF))
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                raise FetchError(f"cannot fetch {url}: {exc}") from exc

    def fetch_small(
        self,
        url: str,
        *,
        max_bytes: int = SMALL_FILE_MAX,
        validators: Mapping[str, str] | None = None,
    ) -> Small:
        """The whole body of a small file, with retries; capped so no server can fill memory.

        ``validators`` (If-None-Match / If-Modified-Since) may earn a 304 with an empty body.
        """
        if scheme(url) == "file":
            return Small(read_local(url, max_bytes), url, 200)
        return self.retrying(url, lambda: self._fetch_small_once(url, max_bytes, validators))

    def _fetch_small_once(
        self, url: str, max_bytes: int, validators: Mapping[str, str] | None
    ) -> Small:
        with self.get(url, validators) as resp:
            if resp.status_code == 304 and validators:
                return Small(b"", resp.url, 304)
            if resp.status_code != 200:
                raise_for_status(resp, url)
            length = content_length(resp)
            if length is not None and length > max_bytes:
                too_big(url, max_bytes)
            body = bytearray()
            for chunk in resp.raw.stream(min(1 << 20, max_bytes + 1), decode_content=False):
                body += chunk
                if len(body) > max_bytes:
                    too_big(url, max_bytes)
            if length is not None and len(body) < length:
                raise Transient(f"connection closed after {len(body)} of {length} bytes")
            headers = resp.headers
            return Small(
                bytes(body), resp.url, 200, headers.get("ETag"), headers.get("Last-Modified")
            )


def scheme(url: str) -> str:
    """The URL's scheme, if imagekit can fetch it (http, https, file); FetchError otherwise."""
    found = urlsplit(url).scheme.lower()
    if found not in ("http", "https", "file"):
        raise FetchError(f"cannot download {url!r}: only http://, https:// and file:// URLs work")
    return found


def local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"cannot read {url}: file:// URLs must name a local file")
    return Path(url2pathname(parts.path))


def read_local(url: str, max_bytes: int) -> bytes:
    """A small file:// file: a regular file of at most ``max_bytes`` (never /dev/zero)."""
    return read_capped(local_path(url), max_bytes, "local file", error=FetchError)


def content_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def content_range(resp: requests.Response) -> tuple[int, int, int | None] | None:
    """(first, last, total) of a 206's Content-Range; total is None when the server says ``*``."""
    match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    if match is None:
        return None
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


def raise_for_status(resp: requests.Response, url: str) -> NoReturn:
    """Server trouble (5xx, 408, 429) is retried; any other unexpected answer is final."""
    status = resp.status_code
    if status >= 500 or status in (408, 429):
        raise Transient(f"HTTP {status} {resp.reason}")
    if status == 404 or status == 410:
        raise FetchError(f"{url}: HTTP {status}, not found — check the recipe URL or mirror")
    if status in (401, 403):
        raise FetchError(
            f"{url}: HTTP {status}, access denied — the server refuses this URL; "
            "check the recipe URL or mirror"
        )
    raise FetchError(
        f"{url}: unexpected HTTP {status} {resp.reason} — check the recipe URL or mirror"
    )


def too_big(url: str, max_bytes: int) -> NoReturn:
    raise FetchError(
        f"{url} is larger than {max_bytes} bytes, too big for a checksum, signature or "
        "metadata file — check the recipe URL"
    )

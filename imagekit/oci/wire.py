"""Request bodies and answers of the distribution API: a file chunk streamed as a body, a body
read to a cap, a registry's refusal as one line (server trouble retried), upload URLs' queries."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, NoReturn
from urllib.parse import urlencode, urlsplit, urlunsplit

from imagekit.errors import FetchError
from imagekit.net.transport import Transient, content_length

if TYPE_CHECKING:
    import requests

PIECE = 1 << 20  # bytes per read or write when a body streams


class FileChunk:
    """``length`` bytes of an open file from ``offset``, streamed in pieces as a request body.

    Iterable with a length, so requests sends a Content-Length and never holds the chunk whole.
    """

    def __init__(self, file: IO[bytes], offset: int, length: int) -> None:
        self.file, self.offset, self.length = file, offset, length
        self.sent: Callable[[int], None] = lambda n: None

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[memoryview]:
        """The chunk in pieces read into one reused buffer: no allocation (and no page
        faults of a fresh 1 MiB block) per piece; each piece is sent before the next is read."""
        buffer = bytearray(min(PIECE, self.length))
        view = memoryview(buffer)
        left, position = self.length, self.offset
        while left:
            n = os.preadv(self.file.fileno(), [view[: min(PIECE, left)]], position)
            if not n:
                raise FetchError(f"{self.file.name} ended while uploading it; was it changed?")
            left -= n
            position += n
            yield view[:n]
            self.sent(n)


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to whatever query it has (upload URLs carry state)."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def read_capped(resp: requests.Response, limit: int, what: str) -> bytes:
    body = bytearray()
    for piece in resp.raw.stream(PIECE, decode_content=False):
        body += piece
        if len(body) > limit:
            raise FetchError(f"{what} is larger than {limit} bytes; refusing it")
    length = content_length(resp)
    if length is not None and len(body) < length:
        raise Transient(f"connection closed after {len(body)} of {length} bytes")
    return bytes(body)


def fail(resp: requests.Response, what: str) -> NoReturn:
    """Server trouble is retried; anything else is a one-line error with the registry's reason."""
    status = resp.status_code
    if status >= 500 or status in (408, 429):
        raise Transient(f"HTTP {status} {resp.reason}")
    reason = error_text(resp)
    if status == 403:
        raise FetchError(
            f"{what}: access denied (HTTP 403{reason}); check that your account may do this"
        )
    raise FetchError(f"{what}: HTTP {status}{reason}")


def error_text(resp: requests.Response) -> str:
    """The registry's own error codes (``BLOB_UNKNOWN: ...``), short, for the message."""
    try:
        body = resp.raw.read(64 << 10, decode_content=True)
        errors = json.loads(body).get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors[:3])
    except (ValueError, AttributeError, TypeError, OSError):
        return ""
    return f", {text[:300]}" if text else ""

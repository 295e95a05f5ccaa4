"""A loopback HTTP(S) server with fault injection, shared by the tests (and usable for benchmarks).

Tests must not reach the internet, yet downloads must be tested against real sockets: ranges,
validators, resets and slow links are where download code breaks. Each fault is armed per path
by the test and every response is logged, so a test can assert how many bytes crossed the wire.
``rate=`` caps every response at so many bytes a second, like a mirror that limits each
connection (``throttle`` does it for one path); ``peak_in_flight`` says how many requests were
answered at once.
With ``tls=`` (a :class:`TestCA` from :func:`make_test_ca`) it speaks HTTPS, so trust decisions
that depend on TLS are tested against a real handshake; ``redirect`` answers a path with a 30x.

Standalone: ``python tests/httpserver.py ROOT --port N`` serves ROOT until interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import email.utils
import hashlib
import http.server
import io
import re
import socket
import ssl
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote, unquote

_BLOCK = 64 << 10
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class LogEntry:
    """One answered request: what was asked and how much body was actually sent."""

    method: str
    path: str
    range: str | None
    if_range: str | None
    status: int
    sent: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Faults:
    """What the test armed for one path; counters run down as requests consume them."""

    fail_status: int = 500
    fail_times: int = 0
    reset_bytes: int = 0
    reset_times: int = 0
    reset_abort: bool = False
    ignore_range: bool = False
    ignore_if_range: bool = False
    omit_length: bool = False
    bytes_per_second: float | None = None
    conditional: bool = False


@dataclass(frozen=True)
class _Armed:
    """The faults that apply to one request."""

    fail: int | None
    reset: int | None
    abort: bool
    ignore_range: bool
    ignore_if_range: bool
    omit_length: bool
    rate: float | None
    conditional: bool


@dataclass
class _Entity:
    """A file as served: content source plus the validators derived from it."""

    size: int
    etag: str
    last_modified: str
    data: bytes | None = None
    file: Path | None = None

    def open(self) -> BinaryIO:
        if self.file is not None:
            return self.file.open("rb")
        return io.BytesIO(self.data or b"")


@dataclass
class _Memory:
    """An in-memory file; its ETag is computed once, when the content is set."""

    data: bytes
    mtime: float
    etag: str = field(init=False)

    def __post_init__(self) -> None:
        self.etag = _etag(hashlib.sha256(self.data).hexdigest())


def _etag(hexdigest: str) -> str:
    return f'"{hexdigest[:32]}"'


@dataclass(frozen=True)
class TestCA:
    """A throwaway CA and a server certificate it issued for 127.0.0.1 and localhost.

    Clients trust ``ca_cert`` explicitly (``requests.Session().verify = str(ca_cert)``); nothing
    is added to the system's trust store.
    """

    __test__ = False  # not a pytest test class

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_test_ca(directory: Path) -> TestCA:
    """Generate the CA and the server certificate (EC P-256, valid for a day) in ``directory``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagekit test CA")])
    ca = certificate("imagekit test CA", ca_key, ca_name, ca_key, True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = certificate("127.0.0.1", server_key, ca_name, ca_key, False)
    pem = serialization.Encoding.PEM
    files = TestCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(pem))
    files.server_cert.write_bytes(server.public_bytes(pem))
    files.server_key.write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


class LoopbackServer:
    """Serves ``root`` (if given) plus in-memory files on 127.0.0.1 at an ephemeral port."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TestCA | None = None,
        rate: float | None = None,
    ) -> None:
        self.root = root
        self.tls = tls
        self.rate = rate  # bytes/s for every response whose path has no throttle of its own
        self._address = (host, port)
        self._files: dict[str, _Memory] = {}
        self._redirects: dict[str, tuple[str, int]] = {}
        self._faults: dict[str, _Faults] = {}
        self._log: list[tuple[int, LogEntry]] = []  # (arrival order, entry)
        self._arrivals = 0
        self._in_flight = 0
        self.peak_in_flight = 0
        self._etags: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _Server(self._address, Handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.server_cert, self.tls.server_key)
            # The handshake then happens in the handler's thread, not in the accept loop.
            self._httpd.socket = context.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        # a short poll keeps stop() (and so every test's teardown) quick
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    def url(self, path: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._address[0]}:{self.port}/{quote(path.lstrip('/'))}"

    # content ---------------------------------------------------------------------------------

    def add(self, path: str, data: bytes) -> None:
        """Serve ``data`` at ``path`` (in memory, taking precedence over ``root``)."""
        with self._lock:
            self._files[_norm(path)] = _Memory(bytes(data), time.time())

    def replace(self, path: str, data: bytes) -> None:
        """Change the content: new ETag and a Last-Modified at least one second later."""
        key = _norm(path)
        with self._lock:
            old = self._files.get(key)
            mtime = time.time() if old is None else max(time.time(), old.mtime + 1)
            self._files[key] = _Memory(bytes(data), mtime)

    def redirect(self, path: str, url: str, status: int = 302) -> None:
        """Answer requests for ``path`` with ``status`` and ``Location: url`` (another server's)."""
        with self._lock:
            self._redirects[_norm(path)] = (url, status)

    # faults ----------------------------------------------------------------------------------

    def fail_next(self, path: str, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` requests for ``path`` with ``status`` and no content."""
        with self._lock:
            faults = self._faults_for(path)
            faults.fail_status, faults.fail_times = status, times

    def reset_after(self, path: str, nbytes: int, times: int = 1, *, abort: bool = False) -> None:
        """Send full headers but only ``nbytes`` of body, then close the connection.

        ``abort=True`` closes with a TCP RST (a "connection reset by peer") instead of a FIN,
        after a short pause so the client has received what was sent (a reset discards the
        receiver's unread data); the client still loses a read that was half done.
        """
        with self._lock:
            faults = self._faults_for(path)
            faults.reset_bytes, faults.reset_times, faults.reset_abort = nbytes, times, abort

    def ignore_range(self, path: str, enabled: bool = True) -> None:
        """Answer Range requests with the full 200 body, like servers without range support."""
        with self._lock:
            self._faults_for(path).ignore_range = enabled

    def ignore_if_range(self, path: str, enabled: bool = True) -> None:
        """Honour Range even when If-Range no longer matches, like some broken servers."""
        with self._lock:
            self._faults_for(path).ignore_if_range = enabled

    def omit_length(self, path: str, enabled: bool = True) -> None:
        """Send bodies without Content-Length, ended by closing the connection."""
        with self._lock:
            self._faults_for(path).omit_length = enabled

    def throttle(self, path: str, bytes_per_second: float | None) -> None:
        """Send the body of ``path`` at about this rate (None: full speed)."""
        with self._lock:
            self._faults_for(path).bytes_per_second = bytes_per_second

    def conditional(self, path: str, enabled: bool = True) -> None:
        """Answer a GET whose If-None-Match names the current ETag with 304 Not Modified."""
        with self._lock:
            self._faults_for(path).conditional = enabled

    # log -------------------------------------------------------------------------------------

    def log(self, path: str | None = None, *, settle: float = 5.0) -> list[LogEntry]:
        """Answered requests in arrival order, optionally only those for ``path``.

        A client can hold its whole response before the server has logged it, so this first
        waits up to ``settle`` seconds for requests still being answered.
        """
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, settle)
            return [
                e
                for _, e in sorted(self._log, key=lambda item: item[0])
                if path is None or e.path == _norm(path)
            ]

    def clear_log(self, *, settle: float = 5.0) -> None:
        """Forget requests so far (after waiting for those still being answered)."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, settle)
            self._log.clear()

    def sent(self, path: str | None = None) -> int:
        """Total body bytes sent (for ``path``)."""
        return sum(e.sent for e in self.log(path))

    # internals used by the handler -----------------------------------------------------------

    def _faults_for(self, path: str) -> _Faults:
        return self._faults.setdefault(_norm(path), _Faults())

    def _take_fault(self, path: str) -> _Armed:
        """Consume one armed failure/reset for ``path`` and report the persistent settings."""
        with self._lock:
            f = self._faults.get(path, _Faults())
            status = reset = None
            if f.fail_times > 0:
                f.fail_times -= 1
                status = f.fail_status
            elif f.reset_times > 0:
                f.reset_times -= 1
                reset = f.reset_bytes
            return _Armed(
                status,
                reset,
                f.reset_abort,
                f.ignore_range,
                f.ignore_if_range,
                f.omit_length,
                self.rate if f.bytes_per_second is None else f.bytes_per_second,
                f.conditional,
            )

    def _entity(self, path: str) -> _Entity | None:
        with self._lock:
            mem = self._files.get(path)
        if mem is not None:
            return _Entity(len(mem.data), mem.etag, _http_date(mem.mtime), data=mem.data)
        if self.root is None:
            return None
        root = self.root.resolve()
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return None
        st = target.stat()
        key = (str(target), st.st_size, st.st_mtime_ns)
        with self._lock:
            etag = self._etags.get(key)
        if etag is None:
            h = hashlib.sha256()
            with target.open("rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            etag = _etag(h.hexdigest())
            with self._lock:
                self._etags[key] = etag
        return _Entity(st.st_size, etag, _http_date(st.st_mtime), file=target)

    def _arrive(self) -> int:
        with self._lock:
            self._arrivals += 1
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            return self._arrivals

    def _record(self, arrival: int, entry: LogEntry) -> None:
        with self._idle:
            self._log.append((arrival, entry))
            self._in_flight -= 1
            self._idle.notify_all()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Dropped connections (and clients refusing the certificate) are what tests are about."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: LoopbackServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean; the structured log is what tests look at."""

    def _serve(self, *, body: bool) -> None:
        path = _norm(unquote(self.path.split("?", 1)[0]))
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        arrival = self.owner._arrive()
        status, sent = 0, 0
        try:
            status, sent = self._respond(path, range_header, if_range, body=body)
        finally:
            headers = dict(self.headers.items())
            entry = LogEntry(self.command, path, range_header, if_range, status, sent, headers)
            self.owner._record(arrival, entry)

    def _respond(
        self, path: str, range_header: str | None, if_range: str | None, *, body: bool
    ) -> tuple[int, int]:
        with self.owner._lock:
            redirect = self.owner._redirects.get(path)
        if redirect is not None:
            self.send_response(redirect[1])
            self.send_header("Location", redirect[0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return redirect[1], 0
        armed = self.owner._take_fault(path)
        entity = self.owner._entity(path)
        if armed.fail is not None or entity is None:
            code = armed.fail if armed.fail is not None else 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return code, 0

        if armed.conditional and self.headers.get("If-None-Match") == entity.etag:
            self.send_response(304)
            self._validators(entity)
            self.end_headers()
            return 304, 0
        start, end = 0, entity.size - 1
        code = 200
        wanted = None if armed.ignore_range else _parse_range(range_header, entity.size)
        validator_ok = (
            armed.ignore_if_range
            or if_range is None
            or if_range in (entity.etag, entity.last_modified)
        )
        if wanted is not None and validator_ok:
            if wanted[0] >= entity.size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{entity.size}")
                self._validators(entity)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 416, 0
            start, end = wanted
            code = 206
        length = end - start + 1
        self.send_response(code)
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entity.size}")
        self._validators(entity)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if armed.omit_length:
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(length))
        if armed.reset is not None or armed.omit_length:
            self.send_header("Connection", "close")
        self.end_headers()
        if not body:
            return code, 0
        limit = length if armed.reset is None else min(armed.reset, length)
        sent = self._send_body(entity, start, limit, armed.rate)
        if armed.reset is not None:
            self._drop(armed.abort)
        return code, sent

    def _validators(self, entity: _Entity) -> None:
        self.send_header("ETag", entity.etag)
        self.send_header("Last-Modified", entity.last_modified)

    def _send_body(self, entity: _Entity, start: int, length: int, rate: float | None) -> int:
        sent = 0
        began = time.monotonic()
        with entity.open() as f:
            f.seek(start)
            while sent < length:
                block = f.read(min(_BLOCK, length - sent))
                if not block:
                    break
                try:
                    self.wfile.write(block)
                except OSError:  # client went away (killed, timed out, gave up)
                    self.close_connection = True
                    break
                sent += len(block)
                if rate:
                    delay = began + sent / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
        return sent

    def _drop(self, abort: bool) -> None:
        self.close_connection = True
        if abort:  # zero linger: the close sends RST instead of FIN
            time.sleep(0.1)
            linger = struct.pack("ii", 1, 0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            self.connection.close()
        else:
            self.connection.shutdown(socket.SHUT_WR)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as (start, end), or None to send it all.

    A start at or past ``size`` means the range is unsatisfiable (416).
    """
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        return (max(0, size - int(last)), size - 1) if last else None
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    return None if end < start and start < size else (start, end)


def _norm(path: str) -> str:
    return "/" + path.lstrip("/")


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a directory on 127.0.0.1 with ranges.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=None, help="bytes/s per response")
    args = parser.parse_args()
    with LoopbackServer(args.root, port=args.port, rate=args.rate) as server:
        print(f"serving {args.root} at {server.url('')}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

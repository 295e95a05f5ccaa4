"""A real OCI registry for tests: Debian's docker-registry 2.8, on 127.0.0.1, storage in a temp dir.

The binary comes from the Debian package, extracted (never installed) into ``.cache/registry/``
by scripts/setup.sh, or here on first use: ``apt-get download docker-registry`` +
``dpkg-deb -x``. The packaged service listens on every interface, so its config is never used:
each registry gets a config of its own binding ``127.0.0.1:PORT``, a fixed upload secret (so
upload URLs stay valid across a client's restart) and, for the auth cases, an htpasswd file or
a token service (:class:`TokenService`, RS256 tokens signed with a throwaway openssl key).

Every request the registry answers is in its access log, so a test can count PUT/PATCH/POST.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "registry"
BINARY = CACHE / "docker-registry"
_ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3}) ')


def registry_binary() -> Path:
    """The extracted docker-registry binary, extracting it first if setup.sh has not."""
    if BINARY.is_file():
        return BINARY
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("docker-registry needs apt-get and dpkg-deb (Debian): run scripts/setup.sh")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        subprocess.run(
            ["apt-get", "download", "-q", "docker-registry"],
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        deb = next(Path(tmp).glob("docker-registry_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp + "/x"], check=True)
        os.replace(Path(tmp) / "x" / "usr" / "bin" / "docker-registry", BINARY)
    return BINARY


def registry_environment() -> dict[str, str]:
    """The environment without REGISTRY_*: the registry reads those as config overrides (and
    REGISTRY_AUTH_FILE, a client's setting, would become its ``auth.file``)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Request:
    """One request as the registry's access log has it."""

    method: str
    path: str
    status: int


@dataclass
class RunningRegistry:
    """A registry process: its address, storage directory and access log."""

    host: str
    storage: Path
    access_log: Path
    process: subprocess.Popen[bytes]

    def ref(self, repository: str, tag: str = "1") -> str:
        return f"oci://{self.host}/{repository}:{tag}"

    def requests(self) -> list[Request]:
        """Every request answered so far, oldest first."""
        found = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            match = _ACCESS.search(line)
            if match:
                found.append(Request(match[1], match[2], int(match[3])))
        return found

    def mark(self) -> int:
        return len(self.requests())

    def since(self, mark: int) -> list[Request]:
        return self.requests()[mark:]

    def blob_data(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes on its filesystem storage."""
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def repository_blobs(self, repository: str) -> set[str]:
        """The blob digests linked into ``repository`` (its layers, configs and manifests)."""
        root = self.storage / "docker/registry/v2/repositories" / repository / "_layers/sha256"
        return {"sha256:" + p.name for p in root.iterdir()} if root.is_dir() else set()


def uploads(requests: list[Request]) -> list[Request]:
    """The requests that write: POST (start or mount), PATCH (chunks), PUT (finish, manifest)."""
    return [r for r in requests if r.method in ("POST", "PATCH", "PUT")]


def htpasswd(directory: Path, user: str, password: str) -> Path:
    """An htpasswd file (bcrypt, what the registry accepts) made by Apache's htpasswd."""
    out = subprocess.run(
        ["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True
    ).stdout
    path = directory / "htpasswd"
    path.write_text(out)
    return path


def _config(port: int, storage: Path, auth: dict[str, Any] | None, delete: bool) -> str:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": delete},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "imagekit-tests-upload-secret"},
    }
    if auth:
        config["auth"] = auth
    return json.dumps(config)  # YAML is a superset of JSON


@contextmanager
def running_registry(
    directory: Path, *, auth: dict[str, Any] | None = None, delete: bool = True
) -> Iterator[RunningRegistry]:
    """Start a registry bound to 127.0.0.1 on a free port; stop it at the end.

    ``delete`` is distribution's ``storage.delete.enabled``: off, it refuses DELETE (405)."""
    binary = registry_binary()
    directory.mkdir(parents=True, exist_ok=True)
    storage = directory / "storage"
    for _attempt in range(3):
        port = free_port()
        config = directory / "config.yml"
        config.write_text(_config(port, storage, auth, delete))
        log = directory / "access.log"
        with log.open("ab") as out, (directory / "registry.err").open("ab") as err:
            process = subprocess.Popen(
                [str(binary), "serve", str(config)],
                stdout=out,
                stderr=err,
                cwd=directory,
                env=registry_environment(),
            )
        if _ready(port, process):
            break
        process.kill()
        process.wait()
    else:
        errors = (directory / "registry.err").read_text()
        raise RuntimeError(f"docker-registry did not start: {errors}")
    try:
        yield RunningRegistry(f"127.0.0.1:{port}", storage, log, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
            return True
        except urllib.error.HTTPError:
            return True  # 401: up, and asking for credentials
        except OSError:
            time.sleep(0.05)
    return False


# --- a token service for the bearer flow -------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Issues RS256 JWTs the registry trusts (``auth: token``) to one user, for asked scopes
    (only ``pull`` in repositories under ``readonly/``).

    The key and its self-signed certificate are made by openssl, and so are the signatures, so
    the tests need no crypto library. ``issued`` counts the tokens given out.
    """

    SERVICE = "imagekit-test-registry"
    ISSUER = "imagekit-test-issuer"

    def __init__(self, directory: Path, user: str, password: str) -> None:
        self.directory, self.user, self.password = directory, user, password
        self.key, self.cert = directory / "token.key", directory / "token.pem"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
                *("-subj", "/CN=imagekit-test-token", "-keyout", str(self.key)),
                *("-out", str(self.cert)),
            ],
            check=True,
            capture_output=True,
        )
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        self.x5c = base64.b64encode(der).decode()
        self.issued = 0
        self.refused = 0
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def registry_auth(self) -> dict[str, Any]:
        return {
            "token": {
                "realm": self.realm,
                "service": self.SERVICE,
                "issuer": self.ISSUER,
                "rootcertbundle": str(self.cert),
            }
        }

    def __enter__(self) -> TokenService:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def token(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = ["pull"] if name.startswith("readonly/") else actions.split(",")
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.ISSUER,
            "sub": self.user,
            "aud": self.SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        head = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        encoded = [_b64url(json.dumps(part).encode()) for part in (head, claims)]
        signing_input = ".".join(encoded)
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        self.issued += 1
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        service = self
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                if self.headers.get("Authorization") != expected:
                    service.refused += 1
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                scopes = [s for value in query.get("scope", []) for s in value.split(" ")]
                body = json.dumps({"token": service.token(scopes)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the tests count what matters."""

        return Handler


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()

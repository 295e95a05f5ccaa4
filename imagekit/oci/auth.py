"""Registry credentials as users already have them, and the 401 answers that use them.

Credentials come from the files podman and docker write (``config.registry_auth_files``, the
first match wins): ``auths`` entries (base64 ``auth``, or ``username``/``password``, or an
``identitytoken``), ``credHelpers`` and ``credsStore`` through ``docker-credential-NAME get``.
A registry says how it wants them in ``WWW-Authenticate``: Basic, or Bearer with a token service.
No credential, token or Authorization header ever goes into a message, a log or a record: errors
name the file the credentials came from, never their content.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from imagekit import config
from imagekit.core import atomic
from imagekit.core.capped import TEXT_MAX, read_capped
from imagekit.errors import FetchError
from imagekit.net.transport import HEADERS, Transient, Transport

if TYPE_CHECKING:
    import requests

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_TOKEN_MAX = 1 << 20
_HELPER_TIMEOUT = 60
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io"}


@dataclass(frozen=True)
class Credentials:
    """A username and secret for one registry; ``source`` (a path or helper) is safe to print."""

    username: str = field(repr=False)
    password: str = field(repr=False)
    source: str = "the command line"
    identity_token: str | None = field(default=None, repr=False)


def hostname(host: str) -> str:
    """``host[:port]`` without the port (IPv6 addresses keep no brackets)."""
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    return hostname(host).lower() in LOOPBACK_HOSTS


def _key_host(key: str) -> str:
    """An ``auths`` key as ``host[/path]``: docker writes ``https://index.docker.io/v1/``."""
    text = key.strip()
    if "://" in text:
        parts = urlsplit(text)
        text = parts.netloc + parts.path
    text = re.sub(r"/v[12]/?$", "", text.rstrip("/")).rstrip("/")
    host, slash, path = text.partition("/")
    host = "docker.io" if host.lower() in _DOCKER_HUB else host.lower()
    return host + slash + path


def _candidates(host: str, repository: str | None) -> list[str]:
    """``host/a/b``, ``host/a``, ``host``: containers auth.json may key by namespace."""
    base = _key_host(host)
    parts = repository.split("/") if repository else []
    return [base + "".join("/" + p for p in parts[:n]) for n in range(len(parts), 0, -1)] + [base]


def find_credentials(
    host: str, repository: str | None = None, files: Sequence[Path] | None = None
) -> Credentials | None:
    """The first credentials for ``host`` (or ``host/repository``) in the usual files."""
    wanted = _candidates(host, repository)
    for path in config.registry_auth_files() if files is None else files:
        data = _read_auth_file(path)
        if data is None:
            continue
        found = _from_file(data, wanted, path, host)
        if found is not None:
            return found
    return None


def _read_auth_file(path: Path) -> dict[str, Any] | None:
    """An auth file's JSON (a bounded read of a regular file); None when there is none."""
    if not os.path.lexists(path):
        return None
    data = read_capped(path, TEXT_MAX, "registry credentials file", error=FetchError)
    try:
        obj = json.loads(data)
    except ValueError:
        raise FetchError(
            f"cannot read registry credentials from {path}: not valid JSON; fix or remove it"
        ) from None
    return obj if isinstance(obj, dict) else None


def _from_file(
    data: dict[str, Any], wanted: list[str], path: Path, host: str
) -> Credentials | None:
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if _key_host(key) in wanted and isinstance(helper, str):
                if shutil.which(f"docker-credential-{helper}") is None:
                    raise FetchError(
                        f"{path} sends {host} to the credential helper docker-credential-"
                        f"{helper}, which is not installed: install it or edit that file"
                    )
                return _from_helper(helper, host)
    auths = data.get("auths")
    if isinstance(auths, dict):
        entries = {_key_host(key): entry for key, entry in auths.items()}
        for candidate in wanted:
            entry = entries.get(candidate)
            if isinstance(entry, dict):
                found = _from_entry(entry, path)
                if found is not None:
                    return found
    store = data.get("credsStore")
    return _from_helper(store, host) if isinstance(store, str) and store else None


def _from_entry(entry: dict[str, Any], path: Path) -> Credentials | None:
    token = entry.get("identitytoken")
    token = token if isinstance(token, str) and token else None
    user, password = entry.get("username"), entry.get("password")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise FetchError(
                f"{path}: an 'auth' entry is not base64 of USER:PASSWORD; log in again"
            )
    if not isinstance(user, str) or not isinstance(password, str):
        user = password = ""
    return Credentials(user, password, str(path), token) if user or token else None


def _from_helper(helper: str, host: str) -> Credentials | None:
    """``docker-credential-HELPER get``: the server on stdin, JSON on stdout; None if absent."""
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        return None
    try:
        done = subprocess.run(
            [program, "get"],
            input=host,
            capture_output=True,
            text=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"credential helper docker-credential-{helper} failed: {exc}") from None
    if done.returncode != 0:
        return None  # "credentials not found": the helper knows nothing of this registry
    try:
        answer = json.loads(done.stdout)
        user, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise FetchError(
            f"credential helper docker-credential-{helper} printed no Username/Secret JSON"
        ) from None
    source = f"docker-credential-{helper}"
    if user == "<token>":  # an identity (refresh) token, docker's convention
        return Credentials("", "", source, str(secret))
    return Credentials(str(user), str(secret), source)


def save_login(host: str, credentials: Credentials, path: Path | None = None) -> Path:
    """Record ``credentials`` for ``host`` in auth.json (mode 0600), keeping its other entries."""
    path = path or config.login_auth_file()
    data = _read_auth_file(path) or {}
    auths = data.get("auths") if isinstance(data.get("auths"), dict) else {}
    assert isinstance(auths, dict)
    pair = f"{credentials.username}:{credentials.password}".encode()
    auths[host] = {"auth": base64.b64encode(pair).decode()}
    data["auths"] = auths
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic.replace_file(path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o600)
    except OSError as exc:
        raise FetchError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


@dataclass(frozen=True)
class Challenge:
    """What a 401's ``WWW-Authenticate`` asks for: ``basic`` or ``bearer`` and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    params = {
        m[1].lower(): m[2] if m[2] is not None else m[3] for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


class Authenticator:
    """One registry's answer to 401s: which scheme it wants, and a bearer token per scope set.

    Shared by a transfer's threads, so its state changes under a lock. ``credentials`` given
    explicitly (login) are used instead of the files.
    """

    def __init__(
        self,
        host: str,
        transport: Transport,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
        repository: str | None = None,
    ) -> None:
        self.host = host
        self.transport = transport
        self.insecure = insecure
        self._given = credentials
        self._repository = repository
        self._looked_up = credentials is not None
        self._credentials = credentials
        self._basic = False
        self._tokens: dict[tuple[str, ...], str] = {}
        self._lock = threading.Lock()

    def credentials(self) -> Credentials | None:
        with self._lock:
            if not self._looked_up:
                self._credentials = find_credentials(self.host, self._repository)
                self._looked_up = True
            return self._credentials

    def headers(self, url: str, scopes: Sequence[str]) -> dict[str, str]:
        """The Authorization header for ``url``: only ever for this registry's own host."""
        if urlsplit(url).netloc.lower() != self.host.lower():
            return {}
        with self._lock:
            token = self._tokens.get(tuple(sorted(scopes)))
            basic = self._basic
        if token is not None:
            return {"Authorization": f"Bearer {token}"}
        credentials = self.credentials() if basic else None
        if credentials is not None:
            pair = f"{credentials.username}:{credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    def answer(self, response: requests.Response, scopes: Sequence[str]) -> None:
        """Learn from a 401 what the next attempt must send; FetchError when nothing will do."""
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            raise FetchError(
                f"{self.host} answered HTTP 401 without a Basic or Bearer challenge; "
                "check the registry address"
            )
        credentials = self.credentials()
        if challenge.scheme == "basic":
            if credentials is None or not credentials.username:
                raise self.login_needed()
            with self._lock:
                self._basic = True
            return
        token = self._fetch_token(challenge, scopes, credentials)
        with self._lock:
            self._tokens[tuple(sorted(scopes))] = token

    def refused(self, response: requests.Response | None = None) -> FetchError:
        """The error for a request still refused after answering the challenge."""
        challenge = (
            parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if response is not None
            else None
        )
        if challenge is not None and challenge.params.get("error") == "insufficient_scope":
            return FetchError(
                f"{self.host} denies this account {challenge.params.get('scope', 'that access')} "
                "(insufficient scope): check the repository name and your rights to it"
            )
        credentials = self.credentials()
        if credentials is None:
            return self.login_needed()
        return FetchError(
            f"{self.host} refused the credentials from {credentials.source} (HTTP 401): "
            f"run `imagekit login {self.host}` again, or check your access to the repository"
        )

    def login_needed(self) -> FetchError:
        return FetchError(
            f"{self.host} requires a login (HTTP 401) and no credentials for it were found: run "
            f"`imagekit login {self.host}` (podman or docker login work too)"
        )

    def _fetch_token(
        self, challenge: Challenge, scopes: Sequence[str], credentials: Credentials | None
    ) -> str:
        realm = challenge.params.get("realm", "")
        parts = urlsplit(realm)
        secure = parts.scheme == "https" or (
            parts.scheme == "http" and (self.insecure or is_loopback(parts.netloc))
        )
        if not secure:
            raise FetchError(
                f"{self.host} sends clients to the token service {realm!r}, which is not https; "
                "refusing to send credentials there (use --insecure only for a registry you trust)"
            )
        wanted = list(dict.fromkeys([*scopes, *challenge.params.get("scope", "").split()]))
        query: dict[str, Any] = {"scope": [s for s in wanted if s]}
        if challenge.params.get("service"):
            query["service"] = challenge.params["service"]
        return self.transport.retrying(realm, lambda: self._token_once(realm, query, credentials))

    def _token_once(
        self, realm: str, query: dict[str, Any], credentials: Credentials | None
    ) -> str:
        session, timeout = self.transport.session, self.transport.timeout
        if credentials is not None and credentials.identity_token:
            form = {
                **query,
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": "imagekit",
            }
            resp = session.post(realm, data=form, headers=HEADERS, timeout=timeout, stream=True)
        else:
            basic = (credentials.username, credentials.password) if credentials else None
            resp = session.get(
                realm, params=query, auth=basic, headers=HEADERS, timeout=timeout, stream=True
            )
        with resp:
            if resp.status_code in (401, 403):
                raise self.refused() if credentials else self.login_needed()
            if resp.status_code >= 500 or resp.status_code in (408, 429):
                raise Transient(f"token service: HTTP {resp.status_code}")
            if resp.status_code != 200:
                raise FetchError(
                    f"the token service {realm} of {self.host} answered HTTP "
                    f"{resp.status_code}; check the registry's address and auth setup"
                )
            body = resp.raw.read(_TOKEN_MAX + 1, decode_content=True)
        try:
            answer = json.loads(body) if len(body) <= _TOKEN_MAX else {}
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise FetchError(f"the token service of {self.host} answered without a token")
        return token

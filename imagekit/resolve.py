"""Resolve: turn a recipe's version (``41``, ``latest``) into one concrete file to fetch.

Each upstream publishes what exists in its own format, so there is one small resolver per
format: Fedora's ``releases.json`` (``fedora-releases``), the checksum file of an images
directory (``checksum-listing``), Debian's image JSON (``debian-json``) and Ubuntu's
``SHA256SUMS`` (``ubuntu-sums``). Behind a mirror only the mirror is asked, because hosts that
use one often cannot reach upstream: Fedora then reads directory listings instead of
``releases.json``; the others read the same files from the mirror.

Resolution only chooses a file name. What the bytes must be still comes from the checksum file
and its signature (``imagekit.verify``); digests found in metadata are cross-checks.

Every small upstream file goes through :class:`UpstreamCache`: cached in the store with a TTL,
revalidated with conditional requests, and readable with no network at all (``offline``).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from imagekit.checksums import ChecksumEntry, parse_checksum_file
from imagekit.errors import ChecksumError, FetchError, RecipeError, StoreError
from imagekit.fetch import Downloader
from imagekit.recipe import HttpSource, Recipe, ResolveSpec, fill_pattern, version_key
from imagekit.store import canonical_json
from imagekit.verify import hash_file

DEFAULT_TTL = 3600.0  # seconds a cached metadata file counts as fresh
# Test-only: key files that replace every recipe's pinned keys (tests re-sign upstream files).
TEST_KEYS_ENV = "IMAGEKIT_TEST_KEYS"
_MAX_METADATA = 16 << 20
_MAX_BACKOFF = 30.0
_HREF = re.compile(rb"""href\s*=\s*["']([^"'#?]+)""", re.IGNORECASE)


class _Retry(Exception):
    """A server answer worth retrying (5xx, 429)."""


@dataclass(frozen=True)
class _Entry:
    body: bytes
    etag: str | None
    last_modified: str | None
    checked: float  # when upstream last confirmed this body


class UpstreamCache:
    """Small upstream files (metadata, checksum files, signatures) cached in the store.

    A cached file is fresh for ``ttl`` seconds; after that a conditional request
    (If-None-Match / If-Modified-Since) revalidates it and a 304 costs no body. ``refresh``
    revalidates at once; ``offline`` never touches the network. Each URL is read at most once
    per instance, so resolution and verification see the very same bytes.
    """

    def __init__(
        self,
        directory: Path,
        downloader: Downloader,
        *,
        ttl: float = DEFAULT_TTL,
        refresh: bool = False,
        offline: bool = False,
    ) -> None:
        self.directory = directory
        self.downloader = downloader
        self.ttl = ttl
        self.refresh = refresh
        self.offline = offline
        self._seen: dict[str, bytes] = {}
        self._db: Any = None

    def __enter__(self) -> UpstreamCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def get(self, url: str) -> bytes:
        """The body of ``url``: from this pull, the cache while fresh, or upstream."""
        if url not in self._seen:
            self._seen[url] = self._get(url)
        return self._seen[url]

    def sha256_for(self, digests: Mapping[str, str]) -> str | None:
        """The sha256 of bytes stored before under another digest (Debian lists only sha512)."""
        for algorithm, digest in digests.items():
            known = self._read(("digest", algorithm, digest))
            if isinstance(known, str):
                return known
        return None

    def remember(self, digests: Mapping[str, str]) -> None:
        """Record that bytes hashed to all of ``digests`` (computed here, so trustworthy)."""
        for algorithm, digest in digests.items():
            if algorithm != "sha256":
                self._write(("digest", algorithm, digest), digests["sha256"])

    def _get(self, url: str) -> bytes:
        entry = self._entry(url)
        if self.offline:
            if entry is None:
                raise FetchError(
                    f"offline, and {url} was never fetched: run once without --offline to cache it"
                )
            return entry.body
        if entry is not None and not self.refresh and time.time() - entry.checked < self.ttl:
            return entry.body
        fresh = self._fetch(url, entry)
        self._write(("url", url), fresh.__dict__)
        return fresh.body

    def _entry(self, url: str) -> _Entry | None:
        """The cached copy of ``url``; one written by another imagekit version counts as none."""
        raw = self._read(("url", url))
        try:
            return _Entry(**raw) if isinstance(raw, dict) else None
        except TypeError:
            return None

    def _read(self, key: tuple[str, ...]) -> Any:
        try:
            return self._open().get(key)
        except (sqlite3.Error, OSError) as e:
            raise _cache_error(e, self.directory) from e

    def _write(self, key: tuple[str, ...], value: Any) -> None:
        try:
            self._open().set(key, value)
        except (sqlite3.Error, OSError) as e:
            raise _cache_error(e, self.directory) from e

    def _open(self) -> Any:
        if self._db is None:
            import diskcache

            self._db = diskcache.Cache(str(self.directory))
        return self._db

    def _fetch(self, url: str, entry: _Entry | None) -> _Entry:
        if urlsplit(url).scheme == "file":
            return _Entry(self.downloader.fetch_small(url, max_bytes=_MAX_METADATA), None, None, 0)
        headers = {"Accept-Encoding": "identity"}
        if entry is not None and entry.etag:
            headers["If-None-Match"] = entry.etag
        if entry is not None and entry.last_modified:
            headers["If-Modified-Since"] = entry.last_modified
        failures = 0
        import requests  # loaded on first request: cached metadata needs none

        transient = (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            _Retry,
        )
        while True:
            try:
                return self._request(url, headers, entry)
            except transient as exc:
                failures += 1
                if failures > self.downloader.retries:
                    raise FetchError(
                        f"could not fetch {url} ({exc}); check the network or the mirror, or "
                        "use --offline to rely on what was cached before"
                    ) from exc
                time.sleep(min(self.downloader.backoff * 2 ** (failures - 1), _MAX_BACKOFF))
            except requests.RequestException as exc:
                raise FetchError(f"cannot fetch {url}: {exc}") from exc

    def _request(self, url: str, headers: dict[str, str], entry: _Entry | None) -> _Entry:
        session, timeout = self.downloader.session, self.downloader.timeout
        with session.get(url, headers=headers, timeout=timeout, stream=True) as resp:
            if resp.status_code == 304 and entry is not None:
                return replace(entry, checked=time.time())
            if resp.status_code == 429 or resp.status_code >= 500:
                raise _Retry(f"HTTP {resp.status_code} {resp.reason}")
            if resp.status_code != 200:
                raise FetchError(
                    f"{url} answered HTTP {resp.status_code} {resp.reason}; check the recipe's "
                    "URLs, or that the mirror has the upstream layout"
                )
            body = bytearray()
            for chunk in resp.iter_content(1 << 16):
                body += chunk
                if len(body) > _MAX_METADATA:
                    raise FetchError(f"{url} is over {_MAX_METADATA} bytes: not a metadata file")
            etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
            return _Entry(bytes(body), etag, modified, time.time())


@dataclass(frozen=True)
class Candidate:
    """A file upstream offers for a release, with the digests its metadata states."""

    filename: str
    compose: str
    digests: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolution:
    """How a version became a file: recorded in provenance so a pull can be repeated."""

    resolver: str
    release: str
    compose: str
    filename: str
    digests: Mapping[str, str]  # from metadata: cross-checks, never evidence
    metadata: tuple[str, ...]  # the URLs read, as fetched

    def record(self) -> dict[str, Any]:
        return {
            "resolver": self.resolver,
            "release": self.release,
            "compose": self.compose,
            "filename": self.filename,
            "digests": dict(self.digests),
            "metadata": list(self.metadata),
        }


@dataclass(frozen=True)
class Target:
    """What one pull fetches: a concrete source, how it was found, and the ref's identity."""

    source: HttpSource  # URLs in upstream form (``--mirror`` is applied when fetching)
    resolution: Resolution | None
    keys_override: tuple[Path, ...]
    identity: str  # what the ref is annotated with; equal identity, equal image


def on_mirror(url: str, root: str, mirror: str | None) -> str:
    """``url`` with the recipe's ``mirror_root`` replaced by ``mirror`` (unchanged without)."""
    if not mirror:
        return url
    if not mirror.startswith(("http://", "https://", "file://")):
        raise RecipeError(f"mirror {mirror!r} must be an http://, https:// or file:// URL")
    if not url.startswith(root):
        raise RecipeError(
            f"cannot use a mirror for {url}: it is not under the recipe's mirror_root {root}"
        )
    return mirror.rstrip("/") + "/" + url[len(root) :]


def resolve(recipe: Recipe, *, cache: UpstreamCache, mirror: str | None = None) -> Target:
    """The concrete file ``recipe`` stands for; a recipe without ``[resolve]`` is already one."""
    source = recipe.source
    if not isinstance(source, HttpSource):
        raise RecipeError(f"{recipe.name}: source kind {source.kind!r} is not downloaded")
    override = _override_keys() if source.keys or source.release_keys else ()
    resolution = None
    if source.resolve is not None:
        context = _Context(recipe, source, source.resolve, cache, mirror)
        release, candidate = _RESOLVERS[source.resolve.resolver](context)
        source = context.concrete(release, candidate)
        resolution = Resolution(
            resolver=context.spec.resolver,
            release=release,
            compose=candidate.compose,
            filename=candidate.filename,
            digests=candidate.digests,
            metadata=tuple(context.consulted),
        )
    if override:
        source = replace(source, keys=override, fingerprints=())
    if resolution is None and not override:
        return Target(source, None, (), recipe.digest)
    identity = {
        "recipe": recipe.digest,
        "url": source.url,
        "checksum_url": source.checksum_url,
        "signature_url": source.signature_url,
        "filename": source.filename,
        "digests": dict(resolution.digests) if resolution else {},
        "keys_override": [hash_file(path)["sha256"] for path in override],
    }
    digest = "sha256:" + hashlib.sha256(canonical_json(identity)).hexdigest()
    return Target(source, resolution, override, digest)


def _override_keys() -> tuple[Path, ...]:
    paths = tuple(Path(p) for p in os.environ.get(TEST_KEYS_ENV, "").split(os.pathsep) if p)
    for path in paths:
        if not path.is_file():
            raise RecipeError(f"{TEST_KEYS_ENV}: key file {path} does not exist")
    return paths


@dataclass
class _Context:
    """One resolution: the recipe, where to ask, and what was read (for provenance)."""

    recipe: Recipe
    source: HttpSource
    spec: ResolveSpec
    cache: UpstreamCache
    mirror: str | None
    consulted: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        arches = self.spec.arches
        if arches and self.recipe.arch not in arches:
            raise RecipeError(
                f"{self.recipe.name} has no image for {self.recipe.arch}; "
                f"choose --arch {' or '.join(sorted(arches))}"
            )

    def values(self, release: str = "", candidate: Candidate | None = None) -> dict[str, str]:
        recipe = self.recipe
        values = {
            "name": recipe.name,
            "arch": recipe.arch,
            "upstream_arch": self.spec.arches.get(recipe.arch, recipe.arch),
            **self.spec.releases.get(release, {}),
        }
        if release:
            values["release"] = release
        if candidate is not None:
            values.update(compose=candidate.compose, filename=candidate.filename)
        return values

    def fill(self, template: str, values: Mapping[str, str]) -> str:
        try:
            return template.format_map(values)
        except KeyError as exc:
            raise RecipeError(
                f"{self.recipe.name}: {template!r} uses {exc}, which is not known yet there"
            ) from None

    def fetch(self, template: str, values: Mapping[str, str]) -> tuple[str, bytes]:
        """Read a metadata file: from the mirror when there is one, else from upstream."""
        url = on_mirror(self.fill(template, values), self.source.mirror_root, self.mirror)
        self.consulted.append(url)
        return url, self.cache.get(url)

    def listing(self, template: str, values: Mapping[str, str]) -> list[str]:
        """The names an HTML directory listing links to."""
        _, html = self.fetch(template, values)
        names = (unquote(href.decode("utf-8", "replace")) for href in _HREF.findall(html))
        return [n.rstrip("/").rsplit("/", 1)[-1] for n in names if n.strip("./")]

    def matcher(self, release: str) -> Callable[[str], str | None]:
        """File name -> its compose id ('' without a ``compose`` group), None if no match."""
        patterns = [fill_pattern(p, self.values(release)) for p in self.spec.image]

        def match(name: str) -> str | None:
            for pattern in patterns:
                if found := pattern.fullmatch(name):
                    return found.groupdict().get("compose") or ""
            return None

        return match

    def pick_release(self, available: Iterable[str]) -> str:
        """The requested release, or the newest for ``latest``, among those both sides know."""
        known = self.spec.releases
        present = sorted({r for r in available if not known or r in known}, key=version_key)
        wanted, name = self.recipe.version, self.recipe.name
        if wanted == "latest" and present:
            return present[-1]
        if wanted in present:
            return wanted
        offered = ", ".join([*present, "latest"]) if present else "none"
        if wanted in known or wanted == "latest":
            raise RecipeError(
                f"{name} {wanted} is not published for {self.recipe.arch} where imagekit looked "
                f"({', '.join(self.consulted) or 'the recipe'}); available: {offered}"
            )
        raise RecipeError(f"{name} has no version {wanted!r}; known versions: {offered}")

    def choose(self, release: str, candidates: list[Candidate], where: str) -> Candidate:
        """The newest compose, or the one whose sha256 the user pinned."""
        name = f"{self.recipe.name} {release} ({self.recipe.arch})"
        if not candidates:
            raise RecipeError(
                f"{name}: no file in {where} matches {' or '.join(self.spec.image)}; upstream may "
                "have renamed its images: update the recipe"
            )
        newest = max(candidates, key=lambda c: (version_key(c.compose), c.filename))
        pin = self.source.pinned.get("sha256")
        if pin is None:
            return newest
        for candidate in candidates:
            if candidate.digests.get("sha256") == pin:
                return candidate
        if all("sha256" in c.digests for c in candidates):
            raise ChecksumError(
                f"{name}: upstream no longer offers the image sha256:{pin}; it now offers "
                f"{newest.filename} (sha256:{newest.digests['sha256']}). Drop the @sha256 pin "
                "to take it"
            )
        return newest  # the checksum file decides whether the pin still holds

    def concrete(self, release: str, candidate: Candidate) -> HttpSource:
        """The source with every template filled and the keys of this release pinned."""
        values = self.values(release, candidate)
        pins = self.source.release_keys.get(release)
        source = self.source
        return replace(
            source,
            url=self.fill(source.url, values),
            checksum_url=self.fill(source.checksum_url, values) if source.checksum_url else None,
            signature_url=self.fill(source.signature_url, values) if source.signature_url else None,
            filename=candidate.filename,
            keys=pins.files if pins else source.keys,
            fingerprints=pins.fingerprints if pins else source.fingerprints,
            release_keys={},
            resolve=None,
        )


def _fedora_releases(context: _Context) -> tuple[str, Candidate]:
    """Upstream: releases.json. Behind a mirror: the listings of releases/ and the images dir."""
    spec = context.spec
    if context.mirror:
        names = context.listing(spec.releases_url, context.values())
        release = context.pick_release(name for name in names if name.isdigit())
        directory = context.source.url.rsplit("/", 1)[0] + "/"
        match = context.matcher(release)
        listed = context.listing(directory, context.values(release))
        found = [Candidate(n, compose) for n in listed if (compose := match(n)) is not None]
        return release, context.choose(release, found, context.consulted[-1])
    url, data = context.fetch(spec.metadata_url, context.values())
    entries = _json(data, url)
    offered: dict[str, list[Candidate]] = {}
    for entry in entries if isinstance(entries, list) else []:
        version = str(_field(entry, "version"))
        if not version.isdigit() or _field(entry, "arch") != context.values()["upstream_arch"]:
            continue
        filename = str(_field(entry, "link")).rsplit("/", 1)[-1]
        compose = context.matcher(version)(filename)
        if compose is not None:
            sha256 = str(_field(entry, "sha256")).lower()
            digests = {"sha256": sha256} if re.fullmatch("[0-9a-f]{64}", sha256) else {}
            offered.setdefault(version, []).append(Candidate(filename, compose, digests))
    release = context.pick_release(offered)
    return release, context.choose(release, offered[release], url)


def _checksum_listing(context: _Context) -> tuple[str, Candidate]:
    """The images directory's checksum file lists every file: the newest compose wins."""
    release = context.pick_release(context.spec.releases)
    url, data = context.fetch(context.source.checksum_url or "", context.values(release))
    match = context.matcher(release)
    found: dict[str, Candidate] = {}
    for entry in _entries(data, url):
        compose = match(entry.filename)
        if compose is not None:
            known = found.get(entry.filename)
            digests = {**(known.digests if known else {}), entry.algorithm: entry.digest}
            found[entry.filename] = Candidate(entry.filename, compose, digests)
    return release, context.choose(release, list(found.values()), url)


def _debian_json(context: _Context) -> tuple[str, Candidate]:
    """Debian's ``<release>-<vendor>-<arch>.json``: one Upload item per published file."""
    release = context.pick_release(context.spec.releases)
    url, data = context.fetch(context.spec.metadata_url, context.values(release))
    document = _json(data, url)
    items = _field(document, "items") if isinstance(document, dict) else []
    match = context.matcher(release)
    found = []
    for item in items if isinstance(items, list) else []:
        if _field(item, "kind") != "Upload":
            continue
        filename = str(_field(_field(item, "data"), "ref")).rsplit("/", 1)[-1]
        compose = match(filename)
        if compose is not None:
            annotations = _field(_field(item, "metadata"), "annotations")
            digest = str(_field(annotations, "cloud.debian.org/digest"))
            found.append(Candidate(filename, compose, _debian_digest(digest, url)))
    return release, context.choose(release, found, url)


def _ubuntu_sums(context: _Context) -> tuple[str, Candidate]:
    """The release directory's SHA256SUMS; the serial comes from its image changelog line."""
    release = context.pick_release(context.spec.releases)
    values = context.values(release)
    url, data = context.fetch(context.spec.metadata_url, values)
    entries = _entries(data, url)
    serial = fill_pattern(context.spec.compose, values)
    serials = [m["compose"] for e in entries if (m := serial.fullmatch(e.filename))]
    if not serials:
        raise RecipeError(
            f"{url} names no release serial matching {context.spec.compose!r}; update the recipe"
        )
    compose = max(serials, key=version_key)
    match = context.matcher(release)
    found = [
        Candidate(e.filename, compose, {e.algorithm: e.digest})
        for e in entries
        if match(e.filename) is not None
    ]
    return release, context.choose(release, found, url)


_RESOLVERS: dict[str, Callable[[_Context], tuple[str, Candidate]]] = {
    "fedora-releases": _fedora_releases,
    "checksum-listing": _checksum_listing,
    "debian-json": _debian_json,
    "ubuntu-sums": _ubuntu_sums,
}


def _entries(data: bytes, url: str) -> list[ChecksumEntry]:
    try:
        return parse_checksum_file(data.decode("utf-8"), url)
    except UnicodeDecodeError as exc:
        raise ChecksumError(f"{url} is not UTF-8 text: {exc}") from exc


def _json(data: bytes, url: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(f"{url} is not valid JSON ({exc}); check the URL or the mirror") from exc


def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` for JSON objects, ``""`` for anything else: metadata shapes vary."""
    return obj.get(key, "") if isinstance(obj, dict) else ""


def _debian_digest(text: str, url: str) -> dict[str, str]:
    """``sha512:<unpadded base64>`` as Debian writes it, in hex."""
    algorithm, _, encoded = text.partition(":")
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raw = b""
    if algorithm not in ("sha256", "sha512") or len(raw) != hashlib.new(algorithm).digest_size:
        raise ChecksumError(f"{url}: malformed digest {text!r} in the image metadata")
    return {algorithm: raw.hex()}


def _cache_error(error: Exception, directory: Path) -> StoreError:
    """diskcache speaks sqlite; say what it means for the user (a full disk, mostly)."""
    text = str(error)
    if "full" in text or getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"disk full while caching upstream metadata in {directory}: free space (or run "
            "`imagekit gc --partial`) and run again; nothing was stored"
        )
    return StoreError(f"the metadata cache in {directory} failed: {text}; delete it to reset it")

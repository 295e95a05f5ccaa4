"""Retention in a registry: delete the manifests a policy chooses, by digest (``imagekit prune``).

The distribution API deletes manifests, not tags: deleting a digest removes every tag naming
it, so tags naming one manifest are one image (as oci.retention counts them). A chosen image
that a kept image names as its ``subject`` (a base it was built on and pushed with), or that a
kept multi-arch index names, stays; an index is as new as its newest image. A deleted image's
cosign signature (tag ``sha256-<hex>.sig``) is deleted with it. The registry
frees the blobs later, in its own garbage collection (distribution: ``registry
garbage-collect``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imagekit.errors import FetchError
from imagekit.oci import retention
from imagekit.oci.media import signature_tag
from imagekit.oci.registry import Registry
from imagekit.oci.wire import read_capped

_CONFIG_MAX = 1 << 20  # a config blob read only for its creation time
_CHAIN_MAX = 64  # subject links followed from one kept image
_INDEX_DEPTH = 2  # an index of indexes, at the most, is read for its newest image


@dataclass(frozen=True)
class PruneReport:
    """What prune deleted (or would, on a dry run) in ``repository``, and why it kept the rest."""

    repository: str
    removed: dict[str, list[str]]  # manifest digest -> its tags
    kept: dict[str, str]  # tag -> why
    removed_signatures: list[str] = field(default_factory=list)  # signature tags deleted
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "removed": self.removed,
            "kept": self.kept,
            "removed_signatures": self.removed_signatures,
            "dry_run": self.dry_run,
        }


def prune(
    registry: Registry, repository: str, policy: retention.Policy, *, dry_run: bool = False
) -> PruneReport:
    """Apply ``policy`` to the tags of ``repository`` and delete what it chose (see module)."""
    tags = registry.tags(repository)
    images = [t for t in tags if not retention.is_signature(t)]
    manifests: dict[str, dict[str, Any]] = {}
    tagged = []
    for order, tag in enumerate(images):
        manifest = registry.get_manifest(repository, tag)
        if manifest.digest not in manifests:
            manifests[manifest.digest] = manifest.json()
        created = _created(registry, repository, manifests[manifest.digest], manifests)
        tagged.append(retention.Tagged(tag, repository, manifest.digest, created, order))
    chosen = retention.choose(tagged, policy)
    kept = dict(chosen.kept)
    leaving = {t.digest for t in chosen.remove}
    needed = _needed(registry, repository, {t.digest for t in tagged} - leaving, manifests)
    removed: dict[str, list[str]] = {}
    for t in chosen.remove:
        if t.digest in needed:
            kept[t.ref] = needed[t.digest]
        else:
            removed.setdefault(t.digest, []).append(t.ref)
    signatures = [signature_tag(d) for d in removed if signature_tag(d) in tags]
    if not dry_run:
        for signature in signatures:
            digest = registry.manifest_digest(repository, signature)
            if digest is not None:
                registry.delete_manifest(repository, digest)
        for digest in removed:
            registry.delete_manifest(repository, digest)
    return PruneReport(repository, removed, kept, signatures, dry_run)


def _created(
    registry: Registry,
    repository: str,
    manifest: dict[str, Any],
    manifests: dict[str, dict[str, Any]],
    depth: int = 0,
) -> datetime | None:
    """The image's creation time: the manifest's annotation, else its config's ``created``; an
    index without one is as new as its newest image."""
    found = retention.created_at(manifest, None)
    if found is None and depth < _INDEX_DEPTH:
        children = [_manifest(registry, repository, d, manifests) for d in _children(manifest)]
        times = [_created(registry, repository, c, manifests, depth + 1) for c in children if c]
        found = max((t for t in times if t is not None), default=None)
    config = manifest.get("config")
    if found is not None or not isinstance(config, dict) or not config.get("digest"):
        return found
    with registry.open_blob(repository, str(config["digest"])) as resp:
        if resp.status_code != 200:
            return None
        body = read_capped(resp, _CONFIG_MAX, f"config {config['digest']}")
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    return retention.created_at(manifest, obj if isinstance(obj, dict) else None)


def _children(manifest: dict[str, Any]) -> list[str]:
    """The digests a multi-arch index names (none for an image manifest)."""
    entries = manifest.get("manifests")
    if not isinstance(entries, list):
        return []
    return [str(e["digest"]) for e in entries if isinstance(e, dict) and e.get("digest")]


def _manifest(
    registry: Registry, repository: str, digest: str, manifests: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """``digest``'s manifest, read once; None if the registry does not have it."""
    if digest not in manifests:
        try:
            manifests[digest] = registry.get_manifest(repository, digest).json()
        except FetchError:
            return None  # a base that is not there is not ours to keep
    return manifests[digest]


def _needed(
    registry: Registry, repository: str, kept: set[str], manifests: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """The manifests the kept ones need, and why: the images a kept index names, and the bases
    every kept image (or image of a kept index) is built on, through their ``subject`` links."""
    needed: dict[str, str] = {}
    queue = [(digest, 0) for digest in kept]
    while queue:
        digest, steps = queue.pop()
        manifest = _manifest(registry, repository, digest, manifests)
        if manifest is None or steps >= _CHAIN_MAX:
            continue
        subject = manifest.get("subject")
        links = (
            [(str(subject["digest"]), "a kept image is built on it")]
            if isinstance(subject, dict) and subject.get("digest")
            else []
        )
        links += [(child, "a kept multi-arch index names it") for child in _children(manifest)]
        for link, why in links:
            if link not in needed and link not in kept:
                needed[link] = why
                queue.append((link, steps + 1))
    return needed

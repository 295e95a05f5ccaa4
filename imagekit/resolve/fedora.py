"""Fedora: ``releases.json`` upstream; directory listings behind a mirror."""

from __future__ import annotations

import re

from imagekit.resolve.context import Candidate, Context, field_of, parse_json


def resolve_fedora(context: Context) -> tuple[str, Candidate]:
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
    entries = parse_json(data, url)
    offered: dict[str, list[Candidate]] = {}
    for entry in entries if isinstance(entries, list) else []:
        version = str(field_of(entry, "version"))
        if not version.isdigit() or field_of(entry, "arch") != context.values()["upstream_arch"]:
            continue
        filename = str(field_of(entry, "link")).rsplit("/", 1)[-1]
        compose = context.matcher(version)(filename)
        if compose is not None:
            sha256 = str(field_of(entry, "sha256")).lower()
            digests = {"sha256": sha256} if re.fullmatch("[0-9a-f]{64}", sha256) else {}
            offered.setdefault(version, []).append(Candidate(filename, compose, digests))
    release = context.pick_release(offered)
    return release, context.choose(release, offered[release], url)

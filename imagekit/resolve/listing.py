"""An images directory's checksum file lists every file: the newest compose wins (CentOS Stream,
AlmaLinux, Rocky)."""

from __future__ import annotations

from imagekit.resolve.context import Candidate, Context, checksum_entries


def resolve_checksum_listing(context: Context) -> tuple[str, Candidate]:
    """The images directory's checksum file lists every file: the newest compose wins."""
    release = context.pick_release(context.spec.releases)
    url, data = context.fetch(context.source.checksum_url or "", context.values(release))
    match = context.matcher(release)
    found: dict[str, Candidate] = {}
    for entry in checksum_entries(data, url):
        compose = match(entry.filename)
        if compose is not None:
            known = found.get(entry.filename)
            digests = {**(known.digests if known else {}), entry.algorithm: entry.digest}
            found[entry.filename] = Candidate(entry.filename, compose, digests)
    return release, context.choose(release, list(found.values()), url)

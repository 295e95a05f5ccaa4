"""Garbage collection: what the refs reach stays, the rest goes (fsck: oci/fsck.py).

gc marks from every ref, every recorded outside user (``roots/``: an ``export --link`` overlay)
and extra roots, through manifests, overlay parent annotations and the qcow2 backing names qemu
itself would follow, then sweeps the rest under the exclusive lock, so no pull or build is
between adding blobs and tagging them. Lock files nobody holds go too. A signature's tag
(``NAME:sha256-<hex>.sig``) is no root of its own: it lives as long as the manifest it signs.

At scale (10,000 images) what cost was reading every reachable blob on every run. What a blob
keeps alive is a fact of its bytes, which never change, so the edges are kept in a memo
(oci.memo, ``cache/memo-gc-children.json``) and a run reads only blobs it has not seen: the
mark is then a walk in memory, the sweep one ``scandir``. A lost or damaged memo only costs the
reads again.

A run with nothing new to mark then still parsed every entry and walked 30,000 edges, so gc
also records its live set with what it was marked from (oci.memo.LiveSet,
``cache/memo-gc-live``): index.json's hash, its roots (each image's digest, each signature's
with its subject; not which ref names what) and a key of every other root (recorded outside
roots, extra roots). A record is reused only when those match: the same index.json bytes, no
parse at all; the same roots (a ref moved or renamed), a read of the index without building
Descriptors; more roots (refs added), a mark from the new ones on top of it, since a live set
holds everything its members reach. A root gone, another outside root or extra root, a
retention policy, a damaged record: the full mark, from the edges. A record is written after
the sweep of a full mark, or of a grown one once its new blobs pass 1% of the record (marking
fewer again next time costs less than rewriting 30,000 digests), and only when the run untagged
nothing and met no missing blob (a manifest that arrives later would reach what that mark could
not know). So a kill anywhere leaves the last record, keyed by what it was marked from. These
are no mark counts that must follow every tag in step with index.json: a tag or untag makes the
key differ, so a stale record is never used. Like the edge memo it is trusted once its hash
holds: only the store's owner writes ``cache/``.

Last, each sweep notes what it left (oci.memo.Swept, ``cache/memo-gc-swept``): ``blobs/``'s
device, inode and mtime, with the live set's keys. When the next run finds ``blobs/`` unchanged
(no blob added or removed since) and the same roots, nothing can be unmarked, so it neither
loads the live set nor lists ``blobs/``; the same roots are known without a parse when the
index's bytes, or its entry lines in any order (a ref retagged to what it named), are the
same. Skipping a sweep can only leave garbage, never remove a blob; a look at ``blobs/``
within 0.1 s of its last change is not trusted, so a change in the same timestamp tick is not
missed on Linux's millisecond clocks (on a filesystem with 1 s timestamps a blob added in that
second waits for a later sweep).

With a retention policy (``gc --keep-last N``, oci.retention) gc first chooses, under the same
lock, the tags that go; a chosen tag whose image a kept image is built on, or a file outside the
store backs onto, stays tagged. Then it marks and sweeps as ever, so everything a kept image's
chain needs stays whatever the policy chose.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime

from imagekit.core.digest import canonical_json, sha256_bytes
from imagekit.errors import StoreError
from imagekit.oci import index, retention
from imagekit.oci import roots as outside
from imagekit.oci.descriptor import check_digest
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.mark import mark, mark_signatures, ref_of, signed, signed_subject
from imagekit.oci.memo import LiveSet, Memo, Swept
from imagekit.oci.sweep import sweep_blobs, sweep_locks, sweep_roots, sweep_tmp

# A live set is rewritten once the blobs marked on top of it exceed this share of it (1/N):
# fewer are read again by the next run for less than rewriting 30,000 digests costs.
_REMARK_SHARE = 100
# blobs/ looked at within this of its last change may change again in the same timestamp tick
# (coarse kernel clocks: milliseconds on ext4, xfs, btrfs, tmpfs): such a look is not trusted.
_RACY_NS = 100_000_000


@dataclass(frozen=True)
class GcReport:
    """What gc removed (or would remove, on a dry run); ``freed_bytes`` counts blobs and temps.

    ``removed_locks`` are lock files nobody held, relative to the store root;
    ``dropped_roots`` maps each outside path gc stopped keeping blobs for to the reason.
    ``removed_signatures`` are the signature refs untagged because their image went;
    ``removed_refs`` the tags a retention policy removed, ``kept_refs`` why it kept the others.
    """

    removed_blobs: list[str]
    freed_bytes: int
    removed_temp: list[str]
    removed_locks: list[str] = field(default_factory=list)
    dropped_roots: dict[str, str] = field(default_factory=dict)
    removed_signatures: list[str] = field(default_factory=list)
    removed_refs: list[str] = field(default_factory=list)
    kept_refs: dict[str, str] = field(default_factory=dict)


def collect(
    layout: Layout,
    *,
    extra_roots: Iterable[str] = (),
    remove_partial: bool = False,
    dry_run: bool = False,
    policy: retention.Policy | None = None,
) -> GcReport:
    """Remove blobs no ref, recorded root or extra root reaches, temps of processes that died,
    and lock files nobody holds; with ``policy``, first the tags it chooses (see the module).

    A recorded root whose file is gone or no longer backs onto the store is dropped first.
    Partial downloads (``tmp/*.part``, ``*.part.json``) are kept for resuming unless
    ``remove_partial``. Waits for every shared-lock holder (pulls, builds) to finish.
    """
    with layout.exclusive_lock():
        data = layout.index_bytes()
        kept, dropped = _outside_roots(layout)
        others = _others_key(kept, extra_roots)
        index_digest = sha256_bytes(data)
        if policy is None and _swept_since(layout, others, index_digest, data):
            sweep_roots(layout, dropped, dry_run)
            removed_temp, temp_bytes = sweep_tmp(layout, remove_partial, dry_run)
            locks = sweep_locks(layout, dry_run)
            return GcReport([], temp_bytes, removed_temp, locks, dropped)
        last = LiveSet.load(layout) if policy is None else None
        if last is not None and last.others != others:
            last = None
        missing: set[str] = set()
        removed_refs: list[str] = []
        kept_refs: dict[str, str] = {}
        unsigned: list[str] = []
        found = index.refs_and_digests(data) if last and last.index != index_digest else None
        now = _roots(found) if found is not None else None
        memo = Memo(layout, "gc-children")  # the edges of blobs, read only by a full mark
        marked: AbstractSet[str]
        if last is not None and last.index == index_digest:
            marked, roots = last.digests, last.roots  # index.json is as it was last marked
            record = False
        elif last is not None and found is not None and now is not None and now >= last.roots:
            # refs were only added or moved: mark from the new roots on top of the last run's
            added = now - last.roots
            marked, unsigned = _mark_added(layout, found, added, last, dry_run, missing)
            roots = now
            # re-marking a few new blobs next time costs less than rewriting the record now
            record = len(marked) - len(last.digests) > len(last.digests) // _REMARK_SHARE
        else:
            marked, removed_refs, kept_refs, unsigned, roots = _mark_all(
                layout, data, kept, extra_roots, policy, memo, dry_run, missing
            )
            record = True
        sweep_roots(layout, dropped, dry_run)
        removed, freed = sweep_blobs(layout, marked, dry_run)
        if not dry_run:
            memo.save(keep=marked)  # a no-op unless the full mark read it
        changed = removed_refs or unsigned or missing or policy is not None or dry_run
        if record and not changed:
            LiveSet(others, index_digest, roots, frozenset(marked)).save(layout)
        if not changed:
            entries, roots_digest = index.lines_digest(data), _digest_of(roots)
            seen = time.time_ns()
            blobs = _blobs_state(layout)
            Swept(others, index_digest, entries, roots_digest, blobs, seen).save(layout)
        removed_temp, temp_bytes = sweep_tmp(layout, remove_partial, dry_run)
        locks = sweep_locks(layout, dry_run)
    return GcReport(
        removed,
        freed + temp_bytes,
        removed_temp,
        locks,
        dropped,
        unsigned,
        removed_refs,
        {ref: why for ref, why in kept_refs.items() if ref not in removed_refs},
    )


def _mark_all(
    layout: Layout,
    data: bytes,
    kept: list[outside.Root],
    extra_roots: Iterable[str],
    policy: retention.Policy | None,
    memo: Memo,
    dry_run: bool,
    missing: set[str],
) -> tuple[set[str], list[str], dict[str, str], list[str], frozenset[str]]:
    """The full mark from every entry of the index ``data``: the live set, the refs the policy
    removed, why it kept the others, the signature refs untagged and the roots (see
    :func:`_roots`) of the entries left."""
    entries = layout.entries(data)
    images = [d for d in entries if signed(d) is None]
    chosen = retention.choose(_tagged(layout, images), policy) if policy else None
    leaving = {t.ref for t in chosen.remove} if chosen else set()
    marked = mark(
        layout,
        [d.digest for d in images if ref_of(d) not in leaving]
        + [check_digest(r) for r in extra_roots],
        set(),
        memo,
        missing,
    )
    kept_refs = dict(chosen.kept) if chosen else {}
    _keep_needed(chosen, marked, "a kept image is built on it", kept_refs)
    marked = mark(
        layout, [d for root in kept for d in (root.manifest, *root.blobs)], marked, memo, missing
    )
    _keep_needed(chosen, marked, "a file outside the store backs onto it", kept_refs)
    removed_refs = sorted(leaving - kept_refs.keys())
    if removed_refs and not dry_run:
        layout.untag_all(removed_refs)
    gone = set(removed_refs)
    remaining = [d for d in entries if ref_of(d) not in gone] if gone else entries
    found = [(ref_of(d), d.digest) for d in remaining]
    unsigned = mark_signatures(layout, found, marked, memo, dry_run, missing)
    return marked, removed_refs, kept_refs, unsigned, _roots(found)


def _swept_since(layout: Layout, others: str, index_digest: str, data: bytes) -> bool:
    """Whether nothing can be unmarked since the last sweep: ``blobs/`` is as that sweep left
    it (no blob added or removed: its mtime, looked at long enough after it last changed that a
    later change would move it) and the live set's keys are the same (index.json's roots)."""
    swept = Swept.load(layout)
    if swept is None or swept.others != others or swept.seen_ns - swept.blobs[2] < _RACY_NS:
        return False
    if _blobs_state(layout) != swept.blobs:
        return False
    if swept.index == index_digest:
        return True
    if swept.entries is not None and index.lines_digest(data) == swept.entries:
        return True  # the same entries, in another order (a ref retagged to what it named)
    found = index.refs_and_digests(data)
    return found is not None and _digest_of(_roots(found)) == swept.roots


def _blobs_state(layout: Layout) -> tuple[int, int, int]:
    st = os.stat(layout.blobs_dir)
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _digest_of(roots: AbstractSet[str]) -> str:
    return sha256_bytes("\n".join(sorted(roots)).encode())


def _others_key(kept: list[outside.Root], extra_roots: Iterable[str]) -> str:
    """What identifies every root besides index.json: a live set marked under another key
    is not reused."""
    recorded = sorted([root.manifest, *root.blobs] for root in kept)
    extra = sorted(check_digest(r) for r in extra_roots)
    return sha256_bytes(canonical_json({"recorded": recorded, "extra": extra}))


def _roots(found: Iterable[tuple[str | None, str]]) -> frozenset[str]:
    """What the live set depends on in index.json's entries (ref, digest): each image's
    digest, each signature's digest with the digest it signs (it lives while that does).
    Which ref names what does not matter, so a moved ref changes nothing."""
    roots = set()
    for ref, digest in found:
        subject = signed_subject(ref) if ref is not None and ref.endswith(".sig") else None
        roots.add(digest if subject is None else f"{digest} {subject}")
    return frozenset(roots)


def _mark_added(
    layout: Layout,
    found: list[tuple[str | None, str]],
    added: frozenset[str],
    last: LiveSet,
    dry_run: bool,
    missing: set[str],
) -> tuple[AbstractSet[str], list[str]]:
    """The live set of ``last`` plus what the ``added`` roots reach (a live set holds all
    its members reach, so nothing else changes), and the new signature refs untagged."""
    if not added:
        return last.digests, []
    images = [root for root in added if " " not in root]
    marked = mark(layout, images, set(last.digests), None, missing)
    signatures = [
        (ref, digest)
        for ref, digest in found
        if ref is not None and ref.endswith(".sig") and f"{digest} {signed_subject(ref)}" in added
    ]
    return marked, mark_signatures(layout, signatures, marked, None, dry_run, missing)


def _tagged(layout: Layout, images: list[Descriptor]) -> list[retention.Tagged]:
    """The store's image tags with the creation time each image records."""
    created: dict[str, datetime | None] = {}
    found = []
    for order, entry in enumerate(images):
        ref = ref_of(entry)
        if ref is None:
            continue
        if entry.digest not in created:
            created[entry.digest] = _created(layout, entry.digest)
        name = ref.partition(":")[0]
        found.append(retention.Tagged(ref, name, entry.digest, created[entry.digest], order))
    return found


def _created(layout: Layout, digest: str) -> datetime | None:
    try:
        manifest = layout.manifest(digest)
        when = retention.created_at(manifest, None)
        if when is None:
            config = layout.read_json(manifest["config"]["digest"])
            when = retention.created_at(manifest, config if isinstance(config, dict) else None)
    except StoreError as e:
        raise StoreError(f"gc stopped, nothing removed: {e}") from e
    return when


def _keep_needed(
    chosen: retention.Choice | None, marked: AbstractSet[str], why: str, kept: dict[str, str]
) -> None:
    """Chosen tags whose image is still needed stay tagged, saying ``why``."""
    for tagged in chosen.remove if chosen else []:
        if tagged.digest in marked and tagged.ref not in kept:
            kept[tagged.ref] = why


def _outside_roots(layout: Layout) -> tuple[list[outside.Root], dict[str, str]]:
    """The recorded roots still in use, and why each other one is stale (the caller drops it)."""
    try:
        records = outside.load_all(layout)
    except StoreError as e:
        raise StoreError(f"gc stopped, nothing removed: {e}") from e
    kept, dropped = [], {}
    for root in records:
        reason = outside.stale_reason(layout, root)
        if reason is None:
            kept.append(root)
            continue
        dropped[str(root.path)] = reason
    return kept, dropped

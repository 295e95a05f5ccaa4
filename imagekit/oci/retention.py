"""Retention: which tags of each image name go, newest first by the time each image was made.

One policy serves the store (``gc --keep-last``) and a registry (``prune``): per image name (a
registry repository), the ``keep_last`` newest images stay, and of the older ones only those
made longer than ``older_than`` ago go. Tags naming one manifest count as one image. "Newest" is
the creation time the image records (the manifest's ``org.opencontainers.image.created``, else
its config's ``created``); ties, at that second's resolution, go by the order they were tagged.
An image whose age is unknown is never removed by ``older_than``. Signature tags
(``sha256-<hex>.sig``) are no images: they go with the manifest they sign.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from imagekit.errors import RecipeError
from imagekit.oci.media import CREATED_ANNOTATION, signed_digest

_AGE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Policy:
    """Keep the ``keep_last`` newest images of each name; of the rest, remove only those older
    than ``older_than`` (None: all of them). ``now`` is the clock ``older_than`` is read on."""

    keep_last: int
    older_than: timedelta | None = None
    now: datetime | None = None

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise RecipeError(
                f"--keep-last {self.keep_last}: keep at least 1 (the newest image of each name "
                "is never removed); to remove every tag of a name use `imagekit rm`"
            )


@dataclass(frozen=True)
class Tagged:
    """One tag of an image name: the manifest it names, when that was made, when it was tagged."""

    ref: str  # NAME:TAG in the store, TAG in a registry repository
    name: str
    digest: str
    created: datetime | None
    order: int  # position in the index / tag list: later is newer among equal times


@dataclass(frozen=True)
class Choice:
    """What a policy decided: the tags to remove, and why each other tag stays."""

    remove: list[Tagged]
    kept: dict[str, str]  # ref -> reason


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s`` (or sums like ``1d12h``) as a duration."""
    parts = _AGE.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise RecipeError(
            f"--older-than {text!r}: give a duration such as 30d, 12h, 2w or 1d12h (s, m, h, d, w)"
        )
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


def created_at(manifest: Mapping[str, Any], config: Mapping[str, Any] | None) -> datetime | None:
    """When an image was made, as it records it (manifest annotation first, then config)."""
    annotations = manifest.get("annotations")
    values = [annotations.get(CREATED_ANNOTATION) if isinstance(annotations, dict) else None]
    values.append(config.get("created") if config else None)
    for value in values:
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def is_signature(tag: str) -> bool:
    return signed_digest(tag) is not None


def choose(tags: Iterable[Tagged], policy: Policy) -> Choice:
    """Apply ``policy`` to each name's tags (signature tags must be left out by the caller)."""
    now = policy.now or datetime.now(UTC)
    by_name: dict[str, dict[str, list[Tagged]]] = {}
    for tagged in tags:
        by_name.setdefault(tagged.name, {}).setdefault(tagged.digest, []).append(tagged)
    remove: list[Tagged] = []
    kept: dict[str, str] = {}
    for images in by_name.values():
        newest_first = sorted(images.values(), key=_newness, reverse=True)
        for rank, image in enumerate(newest_first):
            created = image[0].created
            if rank < policy.keep_last:
                why = f"one of the {policy.keep_last} newest" if rank else "the newest"
            elif policy.older_than is not None and created is None:
                why = "its creation time is unknown"
            elif policy.older_than is not None and created and now - created < policy.older_than:
                why = f"younger than {_age_text(policy.older_than)}"
            else:
                remove.extend(image)
                continue
            kept.update((t.ref, why) for t in image)
    return Choice(sorted(remove, key=lambda t: t.ref), kept)


def _newness(image: list[Tagged]) -> tuple[datetime, int]:
    created = image[0].created or datetime.min.replace(tzinfo=UTC)
    return created, max(t.order for t in image)


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0 and seconds >= _UNITS[unit]:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"

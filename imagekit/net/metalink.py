"""Mirror lists from metalinks: RFC 5854 (Metalink 4) and the Metalink 3.0 MirrorManager serves.

A metalink names, for each file, the URLs it can be fetched from, and hashes. imagekit takes
only the ``http(s)`` URLs listed for the image's file, best first, as more places its segments
may come from. Its hashes are never used: the verified checksum file stays what the bytes must
match, and a mirror serving other bytes fails that check. The document is untrusted: the caller
fetches it capped (``Transport.fetch_small``), a DOCTYPE (entity expansion, external entities)
is refused before parsing, and at most :data:`MAX_URLS` URLs are taken.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from imagekit.errors import FetchError

MAX_URLS = 32
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_LAST = 1 << 30  # the rank of a URL without priority/preference: after those with one


def mirror_urls(document: bytes, filename: str, where: str) -> tuple[str, ...]:
    """The http(s) URLs the metalink lists for ``filename`` (its only file, if it has one)."""
    if _DTD.search(document):
        raise FetchError(f"{where}: a metalink with a DOCTYPE or entities is refused")
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise FetchError(f"{where} is not a metalink: {exc}") from None
    files = [element for element in root.iter() if _local(element.tag) == "file"]
    chosen = [f for f in files if f.get("name") == filename]
    if not chosen and len(files) == 1:
        chosen = files
    if not chosen:
        listed = ", ".join(sorted(str(f.get("name")) for f in files)[:5]) or "no file"
        raise FetchError(f"{where}: the metalink lists {listed}, not {filename}")
    ranked: dict[str, int] = {}
    for element in chosen[0].iter():
        url = (element.text or "").strip()
        if _local(element.tag) == "url" and url.startswith(("https://", "http://")):
            ranked.setdefault(url, _rank(element))
    return tuple(sorted(ranked, key=ranked.__getitem__)[:MAX_URLS])


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _rank(url: ET.Element) -> int:
    """Lower first: Metalink 4's ``priority`` (1 is best), Metalink 3's ``preference`` (100)."""
    priority, preference = url.get("priority", ""), url.get("preference", "")
    if priority.isdigit():
        return int(priority)
    if preference.isdigit():
        return 1000 - int(preference)
    return _LAST

"""An http ``[source]``: URLs, pinned keys and digests, and the level they can prove.

The key table has already checked each key alone; what is checked here is how they combine,
because a combination that cannot be verified must fail when the recipe loads, not at pull time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from imagekit.errors import RecipeError
from imagekit.recipe.load_resolve import check_resolving
from imagekit.recipe.model import HttpSource, KeyPin, ResolveSpec
from imagekit.recipe.schema import HEX_DIGITS, VERSION_RE
from imagekit.recipe.table import Values
from imagekit.recipe.templates import check_fields, expand
from imagekit.verify.policy import CHECKSUM_OVER_TLS, PINNED, SIGNED, UNVERIFIED

URL_KEYS = ("url", "checksum_url", "signature_url")
SCHEMES = ("https://", "http://", "file://")


def http_source(
    source: Values,
    spec: ResolveSpec | None,
    values: Mapping[str, str],
    base_dir: Path,
    where: str,
) -> HttpSource:
    """The source of ``[source]`` (already read by the key table) and its ``[resolve]``."""
    templates = {key: source[key] for key in URL_KEYS}
    if spec is None:
        templates = {key: expand(value, values, where) for key, value in templates.items()}
    url = templates["url"]
    checksum_url = templates["checksum_url"] or None
    signature_url = templates["signature_url"] or None
    for candidate in (url, checksum_url, signature_url):
        if candidate and not candidate.startswith(SCHEMES):
            raise RecipeError(f"{where}: URL {candidate!r} must be https://, http:// or file://")
    if signature_url and not checksum_url:
        raise RecipeError(f"{where}: signature_url needs checksum_url (the file it signs)")
    pinned = {algorithm: source[algorithm].lower() for algorithm in HEX_DIGITS if source[algorithm]}
    keys, fingerprints, release_keys = _keys(source, spec, base_dir, where)
    insecure, level = _level(source, bool(keys or release_keys), checksum_url, pinned, where)
    mirror_root = source["mirror_root"]
    if spec is not None:
        spec = check_resolving(source, spec, release_keys, where)
        filename = ""
    else:
        mirror_root = expand(mirror_root, values, where)
        filename = expand(source["filename"], values, where) or url.rsplit("/")[-1]
        if not filename or "/" in filename:
            raise RecipeError(f"{where}: cannot take a file name from URL {url!r}; set filename")
    if mirror_root and not url.startswith(mirror_root):
        raise RecipeError(f"{where}: url does not start with mirror_root {mirror_root!r}")
    metalink = source["metalink"] or None
    if metalink and spec is None:
        metalink = expand(metalink, values, where)
    if metalink and not metalink.startswith(SCHEMES[:2]):
        raise RecipeError(f"{where}: metalink {metalink!r} must be an https:// or http:// URL")
    mirrors: tuple[str, ...] = source["mirrors"]
    for root in mirrors:
        if not root.startswith(SCHEMES[:2]) or "{" in root:
            raise RecipeError(
                f"{where}: mirrors {root!r} must be a literal https:// or http:// URL"
            )
    return HttpSource(
        url=url,
        checksum_url=checksum_url,
        signature_url=signature_url,
        keys=keys,
        fingerprints=fingerprints,
        pinned=pinned,
        insecure=insecure,
        format=source["format"],
        filename=filename,
        mirror_root=mirror_root or url.rsplit("/", 1)[0] + "/",
        mirrors=mirrors,
        metalink=metalink,
        level=level,
        release_keys=release_keys,
        resolve=spec,
    )


def _keys(
    source: Values, spec: ResolveSpec | None, base_dir: Path, where: str
) -> tuple[tuple[Path, ...], tuple[str, ...], dict[str, KeyPin]]:
    """Fixed keys, or (``fingerprints`` as a table) one pin per release: ``{release}`` in keys."""
    templates: tuple[str, ...] = source["keys"]
    listed = source["fingerprints"]
    if not isinstance(listed, dict):
        if any("{" in template for template in templates):
            raise RecipeError(
                f"{where}: keys with {{release}} need one fingerprint per release: "
                '[source.fingerprints] with "RELEASE" = "FINGERPRINT"'
            )
        files = tuple(_key_file(base_dir / template, where) for template in templates)
        return files, _normalized(listed), {}
    if spec is None:
        raise RecipeError(f"{where}: fingerprints per release need a [resolve] table")
    if not templates:
        raise RecipeError(f"{where}: fingerprints per release need keys, e.g. 'KEY-{{release}}'")
    for template in templates:
        check_fields(template, {"release"}, where, "keys")
    pins = {}
    for release, found in listed.items():
        if not re.fullmatch(VERSION_RE, release) or release == "latest":
            raise RecipeError(f"{where}: fingerprints: invalid release {release!r}")
        if not found:
            raise RecipeError(f"{where}: no fingerprint pinned for release {release!r}")
        paths = (base_dir / t.replace("{release}", release) for t in templates)
        pins[release] = KeyPin(tuple(_key_file(path, where) for path in paths), _normalized(found))
    return (), (), pins


def _normalized(fingerprints: tuple[str, ...]) -> tuple[str, ...]:
    """``115D F9AE ...`` as gpgv prints it: no spaces, upper case."""
    return tuple(f.replace(" ", "").upper() for f in fingerprints)


def _key_file(path: Path, where: str) -> Path:
    try:
        present = path.is_file()
    except OSError:  # a name the OS refuses (ENAMETOOLONG, EACCES) is simply not there
        present = False
    if not present:
        raise RecipeError(f"{where}: key file {str(path)!r} does not exist")
    return path


def _level(
    source: Values,
    signed: bool,
    checksum_url: str | None,
    pinned: Mapping[str, str],
    where: str,
) -> tuple[bool, str]:
    """``insecure`` and the required ``level``, refusing combinations that cannot both hold."""
    insecure: bool = source["insecure"]
    level: str = source["level"]
    if insecure and level not in ("", UNVERIFIED):
        raise RecipeError(f"{where}: insecure = true contradicts level = {level!r}")
    insecure = insecure or level == UNVERIFIED
    if signed and level not in ("", SIGNED):
        raise RecipeError(f'{where}: keys are pinned, so the level is "signed", not {level!r}')
    if level == SIGNED and not signed:
        raise RecipeError(f'{where}: level = "signed" needs keys (and their fingerprints)')
    if level == CHECKSUM_OVER_TLS and not checksum_url:
        raise RecipeError(f'{where}: level = "checksum-over-tls" needs checksum_url')
    if level == PINNED and not pinned:
        raise RecipeError(f'{where}: level = "pinned" needs sha256 or sha512')
    if checksum_url and not (signed or insecure or pinned or level == CHECKSUM_OVER_TLS):
        raise RecipeError(
            f"{where}: checksum_url without keys proves nothing; add the signing key(s), "
            'pin a sha256, set level = "checksum-over-tls" (unsigned, fetched over HTTPS), '
            "or set insecure = true"
        )
    return insecure, level

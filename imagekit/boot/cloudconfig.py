"""The files of a NoCloud seed, rendered from a :class:`SeedSpec` and checked before any boot.

A user's ``#cloud-config`` is parsed as YAML and held to what cloud-init accepts at the top
level (:mod:`imagekit.boot.schema`): cloud-init skips an unknown key with a warning deep in its
log, so a misspelt ``packges:`` would boot a VM that silently lacks its packages. Errors name
the file and line. The rendered files are a pure function of the spec, so the same inputs give
the same seed, and the default ``instance-id`` is derived from their content: a changed seed is
a new instance to cloud-init (its per-instance modules run again), an unchanged one is not.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imagekit.boot.schema import SCHEMA_SOURCE, TOP_LEVEL_KEYS
from imagekit.core.digest import hexpart, identity
from imagekit.errors import RecipeError

HEADER = "#cloud-config"
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_PUBLIC_KEY = re.compile(r"((sk-)?(ssh|ecdsa)-[a-z0-9@.-]+) [A-Za-z0-9+/]+={0,3}( .*)?")


@dataclass(frozen=True)
class SeedSpec:
    """What a NoCloud seed says. Paths are the user's files, read when the seed is made.

    ``user`` is created with ``ssh_keys`` (public key files) and passwordless sudo; without it
    the keys go to the image's default user (``fedora``, ``debian``...). ``user_data`` is a
    ``#cloud-config`` of the user's that the other fields extend. ``instance_id`` defaults to
    one derived from the content.
    """

    hostname: str | None = None
    user: str | None = None
    ssh_keys: tuple[Path, ...] = ()
    packages: tuple[str, ...] = ()
    runcmd: tuple[str, ...] = ()
    user_data: Path | None = None
    network_config: Path | None = None
    vendor_data: Path | None = None
    instance_id: str | None = None


@dataclass(frozen=True)
class SeedFiles:
    """The seed's files by NoCloud name (``user-data``, ``meta-data``, ...), and its identity."""

    files: dict[str, bytes]
    instance_id: str


def render(spec: SeedSpec) -> SeedFiles:
    """The seed's files for ``spec``; RecipeError (naming file and line) on anything invalid."""
    _check_names(spec)
    files = {"user-data": _user_data(spec).encode()}
    if spec.network_config is not None:
        text = _read(spec.network_config)
        _check_network_config(text, str(spec.network_config))
        files["network-config"] = text.encode()
    if spec.vendor_data is not None:
        text = _read(spec.vendor_data)
        if text.startswith(HEADER):  # vendor-data may also be a script: only YAML is checked
            load_cloud_config(text, str(spec.vendor_data))
        files["vendor-data"] = text.encode()
    instance_id = spec.instance_id or _derived_instance_id(files, spec.hostname)
    meta: dict[str, str] = {"instance-id": instance_id}
    if spec.hostname:
        meta["local-hostname"] = spec.hostname
    files["meta-data"] = yaml.safe_dump(meta, sort_keys=False).encode()
    return SeedFiles(dict(sorted(files.items())), instance_id)


def load_cloud_config(text: str, where: str) -> dict[str, Any]:
    """Parse a ``#cloud-config`` document and check its top-level keys against cloud-init's."""
    first = text.split("\n", 1)[0].rstrip()
    if first != HEADER:
        raise RecipeError(
            f"{where}: line 1: user-data must start with {HEADER!r} (found {first[:40]!r}); "
            "imagekit seeds carry cloud-config only"
        )
    node, data = _parse(text, where)
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise RecipeError(
            f"{where}: line {node.start_mark.line + 1}: a cloud-config is a mapping of keys "
            f"(packages:, runcmd: ...), not a {node.tag.rsplit(':', 1)[-1]}"
        )
    _check_keys(node, where)
    assert isinstance(data, dict)
    return data


def _parse(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """The YAML node tree (it keeps line numbers) and the data; an error names its line.

    Constructing can fail where composing did not (a list as a mapping key: "unhashable key").
    """
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise RecipeError(f"{where}: {line}invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{where}: invalid YAML: {exc}") from exc


def _check_keys(node: yaml.MappingNode, where: str) -> None:
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        key, line = str(key_node.value), key_node.start_mark.line + 1
        if key in seen:
            raise RecipeError(
                f"{where}: line {line}: {key!r} is given twice (first at line "
                f"{seen[key]}); cloud-init would keep only the last"
            )
        seen[key] = line
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "check its spelling"
            raise RecipeError(
                f"{where}: line {line}: {key!r} is not a top-level key cloud-init accepts "
                f"({SCHEMA_SOURCE}); {hint}"
            )


def _check_network_config(text: str, where: str) -> None:
    """network-config is YAML: version 1 or 2, bare or under ``network:``."""
    _, data = _parse(text, where)
    if isinstance(data, dict) and isinstance(data.get("network"), dict):
        data = data["network"]
    if not isinstance(data, dict) or data.get("version") not in (1, 2):
        raise RecipeError(
            f"{where}: a network-config is a mapping with 'version: 1' or 'version: 2' "
            "(cloud-init's networking config formats)"
        )


def _user_data(spec: SeedSpec) -> str:
    """The user's cloud-config as written when nothing is added; else the merged document."""
    text = _read(spec.user_data) if spec.user_data is not None else None
    document = load_cloud_config(text, str(spec.user_data)) if text is not None else {}
    additions = _additions(spec)
    if text is not None and not additions:
        return text
    for key, value in additions.items():  # every addition is a list the user's may extend
        existing = document.get(key, ["default"] if key == "users" else [])
        if not isinstance(existing, list):
            raise RecipeError(f"{spec.user_data}: {key} must be a list to be extended")
        document[key] = [*existing, *value]
    body = yaml.safe_dump(document, sort_keys=False, width=1 << 16) if document else ""
    return f"{HEADER}\n{body}"


def _additions(spec: SeedSpec) -> dict[str, Any]:
    keys = [key for path in spec.ssh_keys for key in read_public_keys(path)]
    added: dict[str, Any] = {}
    if spec.user:
        user: dict[str, Any] = {"name": spec.user, "shell": "/bin/bash"}
        user["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
        if keys:
            user["ssh_authorized_keys"] = keys
        added["users"] = [user]
    elif keys:
        added["ssh_authorized_keys"] = keys
    if spec.packages:
        added["packages"] = list(spec.packages)
    if spec.runcmd:
        added["runcmd"] = list(spec.runcmd)
    return added


def read_public_keys(path: Path) -> list[str]:
    """The OpenSSH public keys in ``path`` (one a line); a private key is refused, not copied."""
    text = _read(path)
    if "PRIVATE KEY" in text:
        raise RecipeError(f"{path} is a private key; give its public half ({path}.pub)")
    keys = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    for number, key in enumerate(keys, 1):
        if not _PUBLIC_KEY.fullmatch(key):
            raise RecipeError(
                f"{path}: key {number} is not an OpenSSH public key ('ssh-ed25519 AAAA... comment')"
            )
    if not keys:
        raise RecipeError(f"{path} holds no public key")
    return keys


def _check_names(spec: SeedSpec) -> None:
    if spec.hostname is not None and not _HOSTNAME.fullmatch(spec.hostname):
        raise RecipeError(f"hostname {spec.hostname!r} is not a valid host name (RFC 1123)")
    if spec.user is not None and not _USER.fullmatch(spec.user):
        raise RecipeError(
            f"user {spec.user!r} is not a portable user name: lower-case letters, digits, _ "
            "and -, starting with a letter or _, at most 32 characters"
        )
    if spec.instance_id is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", spec.instance_id):
        raise RecipeError(f"instance-id {spec.instance_id!r}: use letters, digits, '.', '_', '-'")


def _derived_instance_id(files: dict[str, bytes], hostname: str | None) -> str:
    content = {name: data.decode("utf-8", "replace") for name, data in sorted(files.items())}
    return "iid-" + hexpart(identity({"files": content, "hostname": hostname}))[:16]


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read {path}: {exc}") from exc

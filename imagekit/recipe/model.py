"""What a loaded recipe is: plain frozen data, made by :mod:`imagekit.recipe.load`.

Defaults come from the key table (:mod:`imagekit.recipe.schema`), so a source built in code
(``ScratchSource(content=..., size=...)``) gets the same settings a recipe that omits them does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagekit.recipe.schema import CHECK, DISK, HTTP, KICKSTART, SCRATCH, TEST
from imagekit.verify.policy import PINNED, SIGNED, UNVERIFIED


@dataclass(frozen=True)
class KeyPin:
    """The key files a checksum file must be signed with, and the fingerprints allowed to."""

    files: tuple[Path, ...]
    fingerprints: tuple[str, ...]


@dataclass(frozen=True)
class ResolveSpec:
    """How a version like ``41`` or ``latest`` becomes one concrete file: the ``[resolve]`` table.

    ``image`` holds regexes for the image's file name (group ``compose``: the build/compose id);
    ``arches`` maps our arch names to upstream's; ``releases`` maps each release the recipe knows
    to the variables its templates use (``{codename}``).
    """

    resolver: str
    image: tuple[str, ...]
    metadata_url: str = ""
    releases_url: str = ""
    compose: str = ""
    arches: Mapping[str, str] = field(default_factory=dict)
    releases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpSource:
    """An image downloaded over HTTP(S) or read from a ``file://`` URL, with its evidence.

    With ``resolve`` set, the URL fields are templates and the keys are per release
    (``release_keys``); :func:`imagekit.resolve.resolve` turns it into a concrete source.
    """

    url: str
    checksum_url: str | None = None
    signature_url: str | None = None
    keys: tuple[Path, ...] = ()
    fingerprints: tuple[str, ...] = ()
    pinned: Mapping[str, str] = field(default_factory=dict)  # algorithm -> hex
    insecure: bool = HTTP.default("insecure")
    format: str = HTTP.default("format")
    filename: str = ""  # the name the checksum file lists; defaults to the URL's last component
    mirror_root: str = ""  # the URL prefix that ``--mirror`` replaces
    mirrors: tuple[str, ...] = ()  # more roots replacing mirror_root, for the image's bytes only
    metalink: str | None = None  # a metalink listing more URLs of the image (its hashes unused)
    level: str = ""  # the verification level the recipe requires ("": whatever the evidence is)
    release_keys: Mapping[str, KeyPin] = field(default_factory=dict)
    resolve: ResolveSpec | None = None

    kind = "http"

    @property
    def required_level(self) -> str:
        """The level stated, else the one the recipe's evidence is built for."""
        if self.level:
            return self.level
        if self.keys or self.release_keys:
            return SIGNED
        if self.pinned:
            return PINNED
        return UNVERIFIED if self.insecure else ""


@dataclass(frozen=True)
class ScratchSource:
    """A fresh disk made locally and filled from a directory or tarball: no network at all.

    One partition spans the disk; ``content`` is unpacked into its filesystem.
    """

    content: Path
    size: int = SCRATCH.default("size")
    partition_table: str = SCRATCH.default("partition_table")
    filesystem: str = SCRATCH.default("filesystem")
    label: str = SCRATCH.default("label")
    format: str = SCRATCH.default("format")

    kind = "scratch"


@dataclass(frozen=True)
class RecipeSource:
    """Start from another recipe's image (a file path or a bundled ``name[:version]``)."""

    recipe: str
    base_dir: Path

    kind = "recipe"


@dataclass(frozen=True)
class KickstartSource:
    """Run an installer ISO with a kickstart in a throwaway VM: the installed disk is the base.

    The installer is another recipe (``installer_recipe``, pulled and verified like any image) or
    a local ISO pinned by ``installer_sha256``. Durations are seconds, sizes bytes.
    """

    kickstart: Path
    base_dir: Path
    installer_recipe: str = ""
    installer_path: Path | None = None
    installer_sha256: str = ""
    disk_size: int = DISK.default("size")
    disk_format: str = DISK.default("format")
    memory: int = KICKSTART.default("memory")
    vcpus: int = KICKSTART.default("vcpus")
    timeout: float = KICKSTART.default("timeout")
    inactivity: float = KICKSTART.default("inactivity")
    delivery: str = KICKSTART.default("delivery")
    kernel_args: tuple[str, ...] = KICKSTART.default("kernel_args")
    syntax: str = KICKSTART.default("syntax")  # pykickstart version; "" = from the recipe's
    compress: bool = KICKSTART.default("compress")
    force: bool = KICKSTART.default("force")

    kind = "kickstart"


Source = HttpSource | ScratchSource | RecipeSource | KickstartSource


@dataclass(frozen=True)
class CloudInit:
    """``cloud_init`` of ``[test]``: the seed a boot test makes, as ``imagekit seed`` would."""

    hostname: str = ""
    user: str = ""
    ssh_keys: tuple[Path, ...] = ()
    packages: tuple[str, ...] = ()
    runcmd: tuple[str, ...] = ()
    user_data: Path | None = None
    network_config: Path | None = None


@dataclass(frozen=True)
class BootTest:
    """``[test]``: boot the built image until it is ready, before it is tagged.

    Paths are resolved against the recipe's folder; durations are seconds, ``memory`` bytes.
    An empty ``marker`` means the boot check's defaults (cloud-init's finished line, a login).
    """

    boot: bool = TEST.default("boot")
    marker: str = ""
    timeout: float = TEST.default("timeout")
    inactivity: float = TEST.default("inactivity")
    ssh: str = ""
    ssh_user: str = ""
    identity: Path | None = None
    memory: int = TEST.default("memory")
    vcpus: int = TEST.default("vcpus")
    seed: Path | None = None
    seedless: bool = TEST.default("seedless")
    cloud_init: CloudInit | None = None


@dataclass(frozen=True)
class ProfileCheck:
    """``[check]``: compare the built image with a profile; ``profile`` is a name or a file."""

    profile: str
    base_dir: Path
    required: bool = CHECK.default("required")


@dataclass(frozen=True)
class Recipe:
    """A parsed, validated recipe. ``text`` is kept verbatim: it is part of the provenance."""

    name: str
    version: str
    arch: str
    source: Source
    text: str
    path: Path | None = None
    description: str = ""
    customize: tuple[Mapping[str, Any], ...] = ()
    pin: str = ""  # ``sha256:...`` from ``NAME:VERSION@sha256:...``: the exact image wanted
    test: BootTest | None = None
    check: ProfileCheck | None = None

    @property
    def digest(self) -> str:
        """Identity of the recipe's meaning: its text plus the overrides applied when loading."""
        identity = f"{self.text}\0{self.name}\0{self.version}\0{self.arch}"
        if self.pin:
            identity += f"\0{self.pin}"
        return "sha256:" + hashlib.sha256(identity.encode()).hexdigest()

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

"""Loopback mirrors that reproduce each upstream's directory layout and metadata.

A mirror URL stands for a distribution's published root, as ``--mirror`` does: the folder that
holds ``releases/`` for Fedora, ``centos/`` for CentOS Stream, and so on. Each builder serves
the files a bundled recipe reads under that root, starting from the real upstream files in
``tests/data/real`` (their file names, formats and signatures-or-not), with the image bytes made
in the test: the target file's digest (and size) is replaced by the test image's and the
checksum file is re-signed with a test key, which the test pins with ``keys_override``.
Upstreams without a fixture for some release get files named by the same rules.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

from imagekit.verify.checksums import parse_checksum_file
from tests.conftest import REAL
from tests.gpgtools import TestKey, clearsign, detach_sign
from tests.httpserver import LoopbackServer

# Fedora composes by release, as published (40 and 44 from the real files, the others from the
# names on the Fedora download pages).
FEDORA_COMPOSES = {"40": "1.14", "41": "1.4", "42": "1.1", "43": "1.6", "44": "1.7"}


def listing(names: list[str]) -> bytes:
    """An Apache-style autoindex page linking ``names`` (directories end with '/')."""
    rows = "".join(f'<tr><td><a href="{name}">{name}</a></td></tr>\n' for name in names)
    return (
        "<html><head><title>Index</title></head><body><table>\n"
        '<tr><th><a href="?C=N;O=D">Name</a></th></tr>\n'
        '<tr><td><a href="../">Parent Directory</a></td></tr>\n'
        f"{rows}</table></body></html>\n"
    ).encode()


def substitute_image(text: str, filename: str, data: bytes) -> str:
    """A real checksum file with ``filename`` (and aliases of the same bytes) now ``data``.

    Everything else stays as upstream wrote it: names, order, comments, other digests.
    """
    entry = next(e for e in parse_checksum_file(text) if e.filename == filename)
    ours = hashlib.new(entry.algorithm, data).hexdigest()
    aliases = [e.filename for e in parse_checksum_file(text) if e.digest == entry.digest]
    for name in aliases:
        text = re.sub(
            f"^# {re.escape(name)}: [0-9]+ bytes$", f"# {name}: {len(data)} bytes", text, flags=re.M
        )
    return text.replace(entry.digest, ours)


def signed_text(clearsigned: str) -> str:
    """The text inside a clearsigned message (Fedora's CHECKSUM), without armor."""
    body = clearsigned.split("\n\n", 1)[1]
    return body.split("-----BEGIN PGP SIGNATURE-----", 1)[0]


def fedora(
    server: LoopbackServer,
    root: str,
    *,
    variant: str,
    arch: str,
    data: bytes,
    key: TestKey,
    releases: dict[str, str] = FEDORA_COMPOSES,
) -> dict[str, str]:
    """``releases/`` with listings, each release's images directory and signed CHECKSUM.

    Returns release -> the image's server path.
    """
    server.add(f"{root}releases/", listing(["test/", *(f"{r}/" for r in releases)]))
    published = {}
    for release, compose in releases.items():
        directory = f"{root}releases/{release}/{variant}/{arch}/images/"
        filename = fedora_filename(variant, release, compose, arch)
        checksum_name = f"Fedora-{variant}-{release}-{compose}-{arch}-CHECKSUM"
        real = REAL / checksum_name
        if real.exists():
            text = substitute_image(signed_text(real.read_text()), filename, data)
        else:
            digest = hashlib.sha256(data).hexdigest()
            text = f"# {filename}: {len(data)} bytes\nSHA256 ({filename}) = {digest}\n"
        names = [entry.filename for entry in parse_checksum_file(text)]
        server.add(directory, listing([checksum_name, *names]))
        server.add(directory + checksum_name, clearsign(key, text.encode()))
        server.add(directory + filename, data)
        published[release] = directory + filename
    return published


def fedora_filename(variant: str, release: str, compose: str, arch: str) -> str:
    """Fedora's names: Server KVM up to 41 then Guest-Generic; Cloud 40 put the arch first."""
    if variant == "Server":
        kind = "KVM" if int(release) <= 41 else "Guest-Generic"
        return f"Fedora-Server-{kind}-{release}-{compose}.{arch}.qcow2"
    if release == "40":
        return f"Fedora-Cloud-Base-Generic.{arch}-{release}-{compose}.qcow2"
    return f"Fedora-Cloud-Base-Generic-{release}-{compose}.{arch}.qcow2"


def fedora_releases_json(server: LoopbackServer, path: str, extra: dict[str, str]) -> None:
    """The real releases.json plus entries for ``extra`` releases (release -> compose)."""
    entries = json.loads((REAL / "fedora-releases.json").read_text())
    base = "https://download.fedoraproject.org/pub/fedora/linux/releases"
    for release, compose in extra.items():
        for variant, subvariant in (("Server", "Server_KVM"), ("Cloud", "Cloud_Base")):
            for arch in ("x86_64", "aarch64"):
                name = fedora_filename(variant, release, compose, arch)
                link = f"{base}/{release}/{variant}/{arch}/images/{name}"
                entries.append(
                    {
                        "version": release,
                        "arch": arch,
                        "link": link,
                        "variant": variant,
                        "subvariant": subvariant,
                        "sha256": "0" * 64,
                        "size": "1",
                    }
                )
    server.add(path, json.dumps(entries, indent=2).encode())


def checksum_dir(
    server: LoopbackServer,
    directory: str,
    text: str,
    filename: str,
    data: bytes,
) -> str:
    """An images directory whose CHECKSUM is ``text`` with our bytes for ``filename``.

    Returns the image's server path.
    """
    server.add(directory + "CHECKSUM", substitute_image(text, filename, data).encode())
    server.add(directory + filename, data)
    return directory + filename


def renamed(real_file: str, *renames: tuple[str, str]) -> str:
    """A real checksum file with its names changed, for a release without a fixture."""
    text = (REAL / real_file).read_text()
    for old, new in renames:
        text = text.replace(old, new)
    return text


def rocky_checksum(release: str, compose: str, arch: str) -> str:
    """Rocky's combined images CHECKSUM as its mirrors publish it: BSD lines with sizes, each
    dated file next to its ".latest" alias (no fixture: names follow the published ones)."""
    lines = []
    for kind in ("GenericCloud-Base", "GenericCloud-LVM", "EC2-Base", "OCP-Base"):
        digest = hashlib.sha256(kind.encode()).hexdigest()
        for name in (
            f"Rocky-{release}-{kind}-{compose}.{arch}.qcow2",
            f"Rocky-{release}-{kind}.latest.{arch}.qcow2",
        ):
            lines += [f"# {name}: {len(kind)} bytes", f"SHA256 ({name}) = {digest}"]
    return "\n".join(lines) + "\n"


def debian(
    server: LoopbackServer,
    root: str,
    *,
    release: str,
    codename: str,
    debian_arch: str,
    data: bytes,
) -> str:
    """``CODENAME/latest/<json>`` and the build's dated directory with SHA512SUMS; the real
    bookworm amd64 JSON, renamed for other releases and arches. Returns the image's path."""
    text = (REAL / "debian-12-genericcloud-amd64.json").read_text()
    text = text.replace("bookworm", codename).replace("debian-12-", f"debian-{release}-")
    text = text.replace('"release_id": "12"', f'"release_id": "{release}"')
    text = text.replace("amd64", debian_arch)
    document = json.loads(text)
    sha512 = hashlib.sha512(data)
    files = []
    image_ref = ""
    for item in document["items"]:
        if item["kind"] != "Upload":
            continue
        ref = item["data"]["ref"]
        files.append(ref.rsplit("/", 1)[-1])
        if ref.endswith(".qcow2"):
            encoded = base64.b64encode(sha512.digest()).decode().rstrip("=")
            item["metadata"]["annotations"]["cloud.debian.org/digest"] = f"sha512:{encoded}"
            image_ref = ref
    digests = {name: hashlib.sha512(name.encode()).hexdigest() for name in files}
    digests[image_ref.rsplit("/", 1)[-1]] = sha512.hexdigest()
    sums = "".join(f"{digest}  {name}\n" for name, digest in digests.items())
    build_dir = root + image_ref.rsplit("/", 1)[0] + "/"
    server.add(
        f"{root}{codename}/latest/debian-{release}-genericcloud-{debian_arch}.json",
        json.dumps(document).encode(),
    )
    server.add(build_dir + "SHA512SUMS", sums.encode())
    server.add(root + image_ref, data)
    return root + image_ref


def ubuntu(
    server: LoopbackServer,
    root: str,
    *,
    release: str,
    codename: str,
    ubuntu_arch: str,
    data: bytes,
    key: TestKey,
) -> str:
    """``releases/CODENAME/release/`` and ``release-SERIAL/`` as the same directory (upstream
    makes the first a symlink), SHA256SUMS from the real 24.04 one, re-signed detached."""
    text = (REAL / "ubuntu-24.04-SHA256SUMS").read_text().replace("24.04", release)
    filename = f"ubuntu-{release}-server-cloudimg-{ubuntu_arch}.img"
    sums = substitute_image(text, filename, data).encode()
    serial = re.search(rf"{ubuntu_arch}\.release\.[0-9]+\.([0-9]+)\.image_changelog", text)
    assert serial is not None
    for directory in ("release", f"release-{serial[1]}"):
        base = f"{root}releases/{codename}/{directory}/"
        server.add(base + "SHA256SUMS", sums)
        server.add(base + "SHA256SUMS.gpg", detach_sign(key, sums))
        server.add(base + filename, data)
    return f"{root}releases/{codename}/release-{serial[1]}/{filename}"

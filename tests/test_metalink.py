"""Metalinks: the mirror URLs of the image's file, best first; hostile documents refused."""

from __future__ import annotations

from pathlib import Path

import pytest

import imagekit
from imagekit.errors import FetchError
from imagekit.net.metalink import MAX_URLS, mirror_urls
from imagekit.store import Store
from tests.conftest import Upstream, make_qcow2
from tests.httpserver import LoopbackServer

V4 = b"""<?xml version="1.0" encoding="UTF-8"?>
<metalink xmlns="urn:ietf:params:xml:ns:metalink">
  <file name="other.qcow2"><url>https://a.example/other.qcow2</url></file>
  <file name="img.qcow2">
    <size>1234</size>
    <hash type="sha-256">00</hash>
    <url location="de" priority="2">https://b.example/pub/img.qcow2</url>
    <url priority="1">https://a.example/pub/img.qcow2</url>
    <url priority="3">ftp://c.example/pub/img.qcow2</url>
    <url priority="4">http://d.example/pub/img.qcow2</url>
  </file>
</metalink>
"""
# MirrorManager's Metalink 3.0: preference 100 is best
V3 = b"""<?xml version="1.0" encoding="utf-8"?>
<metalink version="3.0" xmlns="http://www.metalinker.org/" type="dynamic">
 <files>
  <file name="img.qcow2">
   <verification><hash type="sha256">00</hash></verification>
   <resources maxconnections="1">
    <url protocol="https" type="https" location="US" preference="99">https://m2.example/img.qcow2</url>
    <url protocol="rsync" type="rsync" location="US" preference="100">rsync://m1.example/img.qcow2</url>
    <url protocol="https" type="https" location="US" preference="100">https://m1.example/img.qcow2</url>
   </resources>
  </file>
 </files>
</metalink>
"""


def test_rfc5854_urls_of_the_file_best_first_http_only() -> None:
    assert mirror_urls(V4, "img.qcow2", "m") == (
        "https://a.example/pub/img.qcow2",
        "https://b.example/pub/img.qcow2",
        "http://d.example/pub/img.qcow2",
    )


def test_metalink_3_preference_orders_the_urls() -> None:
    urls = mirror_urls(V3, "img.qcow2", "m")
    assert urls == ("https://m1.example/img.qcow2", "https://m2.example/img.qcow2")
    # its only file is the image, whatever the name it gives
    assert mirror_urls(V3, "renamed.qcow2", "m") == urls


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b'<!DOCTYPE m [<!ENTITY a "aaaa">]><metalink>&a;</metalink>', "DOCTYPE or entities"),
        (b"<metalink><file", "is not a metalink"),
        (V4, "lists img.qcow2, other.qcow2, not missing.qcow2"),
        (b"<metalink/>", "lists no file, not"),
    ],
)
def test_unusable_metalinks_are_one_line_errors(document: bytes, message: str) -> None:
    name = "missing.qcow2" if document is V4 else "img.qcow2"
    with pytest.raises(FetchError, match=message):
        mirror_urls(document, name, "https://mirrors.example/metalink")


def test_at_most_max_urls_are_taken() -> None:
    urls = "".join(f"<url>https://m{i}.example/img.qcow2</url>" for i in range(100))
    document = f'<metalink><file name="img.qcow2">{urls}</file></metalink>'.encode()
    assert len(mirror_urls(document, "img.qcow2", "m")) == MAX_URLS


def test_a_pull_takes_segments_from_the_metalinks_mirrors(
    upstream: Upstream, tmp_path: Path
) -> None:
    name = "Metalinked-1.qcow2"
    data = make_qcow2(tmp_path / "disk.qcow2", size=16 << 20, seed=51)  # three 8 MiB segments
    upstream.publish(name, data)
    upstream.server.throttle(f"/pub/{name}", 16 << 20)  # the other workers start meanwhile
    with LoopbackServer() as other:
        other.add(f"/copy/{name}", data)
        document = (
            f'<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="{name}">'
            f'<hash type="sha-256">{"0" * 64}</hash>'  # wrong, and never used
            f"<url>{other.url(f'/copy/{name}')}</url></file></metalink>"
        )
        upstream.server.add("/metalink", document.encode())
        metalink = upstream.server.url("/metalink")
        recipe = upstream.recipe(name, extra=f'metalink = "{metalink}"\n')
        image = Store(tmp_path / "store").pull(imagekit.load_recipe(recipe))
        assert any(e.status == 206 for e in other.log())
    assert image.path.read_bytes() == data
    assert image.provenance["source"]["metalink"] == metalink

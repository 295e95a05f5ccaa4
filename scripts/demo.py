"""The main job on an embedded default, offline: build an image, publish it signed, pull it.

1. Build: a scratch disk filled from a tiny busybox root tree made here (the same guest the
   tests use), then one customization step (hostname, user, SSH key, files, firstboot) stored as
   a qcow2 layer. A second build is a cache hit that launches nothing.
2. Publish: export the image and serve it on 127.0.0.1 the way a distribution does, with a
   Fedora-style CHECKSUM clearsigned by a throwaway OpenPGP key.
3. Pull: a recipe pinning that key pulls the image through --mirror (verified, stored), then
   again (a cache hit, no network); images, inspect and fsck show the result.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.guestimage import build_guest_tree  # noqa: E402  the demo guest is the tests' guest

IMAGE = "Demo-Web-1-1.0.x86_64.qcow2"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyForImagekitDemoOnly0000000000000 demo@host"
BUILD_RECIPE = f"""\
name = "web"
version = "1"
description = "busybox demo guest, customized"
[source]
kind = "scratch"
content = "rootfs"
size = "256M"
filesystem = "ext4"
label = "root"

[[customize]]
hostname = "web1.demo.lan"
timezone = "Europe/Berlin"
user = ["alice:groups=wheel"]
ssh_inject = ["alice:string:{SSH_KEY}"]
write = ["/etc/motd:Built by imagekit, offline."]
firstboot_command = ["echo first boot > /root/first-boot"]
sysprep = "machine-id,ssh-hostkeys,logfiles"
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """The demo's output is imagekit's, not the stand-in mirror's access log."""


def imagekit(*args: str) -> None:
    print(f"$ imagekit {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "imagekit", *args], check=True)


def sign_and_publish(upstream: Path, gnupg: Path, image: Path) -> None:
    """Serve ``image`` with a CHECKSUM clearsigned by a new key, and that key's public half."""
    shutil.copy(image, upstream / IMAGE)
    data = (upstream / IMAGE).read_bytes()
    text = f"# {IMAGE}: {len(data)} bytes\nSHA256 ({IMAGE}) = {hashlib.sha256(data).hexdigest()}\n"
    gpg = ["gpg", "--homedir", str(gnupg), "--batch", "--quiet", "--passphrase", ""]

    def run(*args: str, stdin: bytes = b"") -> bytes:
        return subprocess.run([*gpg, *args], input=stdin, capture_output=True, check=True).stdout

    run("--quick-gen-key", "imagekit demo <demo@example.invalid>", "ed25519", "sign", "0")
    (upstream / "CHECKSUM").write_bytes(run("--clearsign", stdin=text.encode()))
    (upstream / "demo.asc").write_bytes(run("--armor", "--export"))
    subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"], check=True)


def main() -> None:
    demo = Path.cwd() / ".demo"
    store = os.environ.get("IMAGEKIT_HOME") or str(demo / "store")
    os.environ["IMAGEKIT_HOME"] = store
    work = demo / "work"
    shutil.rmtree(work, ignore_errors=True)
    (work / "pub").mkdir(parents=True)
    (work / "gnupg").mkdir(mode=0o700)

    build_guest_tree(work / "rootfs")
    (work / "web.toml").write_text(BUILD_RECIPE)
    imagekit("build", str(work / "web.toml"))
    imagekit("build", str(work / "web.toml"))  # unchanged: every layer cached, no launch
    imagekit("export", "web:1", "-o", str(work / "web.qcow2"))

    sign_and_publish(work / "pub", work / "gnupg", work / "web.qcow2")
    handler = functools.partial(QuietHandler, directory=str(work / "pub"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = f"http://127.0.0.1:{server.server_address[1]}/"
    recipe = work / "pub" / "demo.toml"
    recipe.write_text(
        'name = "demo"\nversion = "1"\ndescription = "the demo image, as a host pulls it"\n'
        f'[source]\nurl = "https://images.example.invalid/pub/{IMAGE}"\n'
        'checksum_url = "https://images.example.invalid/pub/CHECKSUM"\nkeys = ["demo.asc"]\n'
    )
    imagekit("pull", str(recipe), "--mirror", mirror)
    imagekit("pull", str(recipe), "--mirror", mirror, "--json")  # a cache hit: no request
    server.shutdown()
    imagekit("images")
    imagekit("inspect", "demo:1")
    imagekit("inspect", "web:1")
    imagekit("fsck")


if __name__ == "__main__":
    main()

"""The main job on an embedded default, offline: publish a signed image on loopback, pull it.

Stands in for a distribution mirror: a disk image made here, a Fedora-style CHECKSUM clearsigned by
a throwaway OpenPGP key, and a recipe pinning that key. Then the real CLI pulls it (verified,
stored), pulls it again (a cache hit, no network), lists, inspects and fscks the store.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

IMAGE = "Demo-Cloud-Base-Generic-1-1.0.x86_64.qcow2"


def run(*command: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def publish(upstream: Path, gnupg: Path) -> None:
    """Make the image, its CHECKSUM clearsigned by a new key, and that key's public half."""
    raw = upstream / "disk.raw"
    with raw.open("wb") as disk:
        disk.truncate(256 << 20)
        disk.write(b"imagekit demo disk\n" * 4096)
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(upstream / IMAGE))
    raw.unlink()
    data = (upstream / IMAGE).read_bytes()
    text = f"# {IMAGE}: {len(data)} bytes\nSHA256 ({IMAGE}) = {hashlib.sha256(data).hexdigest()}\n"
    gpg = ["gpg", "--homedir", str(gnupg), "--batch", "--quiet", "--passphrase", ""]
    run(*gpg, "--quick-gen-key", "imagekit demo <demo@example.invalid>", "ed25519", "sign", "0")
    signed = run(*gpg, "--clearsign", input=text.encode(), capture_output=True).stdout
    (upstream / "CHECKSUM").write_bytes(signed)
    (upstream / "demo.asc").write_bytes(
        run(*gpg, "--armor", "--export", capture_output=True).stdout
    )
    run("gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """The demo's output is imagekit's, not the stand-in mirror's access log."""


def main() -> None:
    store = os.environ.get("IMAGEKIT_HOME") or str(Path.cwd() / ".demo" / "store")
    with tempfile.TemporaryDirectory(prefix="imagekit-demo-") as work:
        upstream, gnupg = Path(work) / "pub", Path(work) / "g"
        upstream.mkdir()
        gnupg.mkdir(mode=0o700)
        publish(upstream, gnupg)
        handler = functools.partial(QuietHandler, directory=str(upstream))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        recipe = upstream / "demo.toml"
        recipe.write_text(
            'name = "demo"\nversion = "1"\ndescription = "offline demo image"\n[source]\n'
            f'url = "https://images.example.invalid/pub/{IMAGE}"\n'
            'checksum_url = "https://images.example.invalid/pub/CHECKSUM"\n'
            'keys = ["demo.asc"]\n'
        )
        cli = [sys.executable, "-m", "imagekit"]
        print(f"$ imagekit pull {recipe.name} --mirror {base}   (store: {store})", flush=True)
        run(*cli, "pull", str(recipe), "--mirror", base, "--store", store)
        print("$ imagekit pull (again: a cache hit, no network)", flush=True)
        run(*cli, "pull", str(recipe), "--mirror", base, "--store", store, "--json")
        server.shutdown()
        for command in (["images"], ["inspect", "demo:1"], ["fsck"]):
            print(f"$ imagekit {' '.join(command)}", flush=True)
            run(*cli, *command[:1], "--store", store, *command[1:])


if __name__ == "__main__":
    main()

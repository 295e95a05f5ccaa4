"""Throwaway OpenPGP keys and signatures for tests, made with the real gpg.

Keys are ed25519 without passphrase, so one costs milliseconds. Keys made in the same directory
share one GNUPGHOME there, which lets `clearsign` sign with several of them at once. gpg starts a
gpg-agent for every secret-key operation; each helper stops it again, so no agents outlive a call
and no fixture has to clean up.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_SOCKET_PATH_MAX = 107  # sun_path; gpg-agent puts its sockets in the homedir here
_LONGEST_SOCKET = "S.gpg-agent.browser"


@dataclass(frozen=True)
class TestKey:
    """A generated key: its GNUPGHOME (with the secret key) and its armored public key file."""

    __test__ = False  # not a pytest test class

    homedir: Path
    fingerprint: str
    public_key: Path


def make_key(
    directory: Path, name: str = "imagekit test", *, expire: str = "0", created: int | None = None
) -> TestKey:
    """Generate a signing key; `expire` as gpg takes it ("0", "1d", ...), `created` a past epoch."""
    homedir = directory / "gnupg"
    if len(str(homedir / _LONGEST_SOCKET)) > _SOCKET_PATH_MAX:
        raise RuntimeError(f"{homedir} is too long for gpg-agent's socket; use a shorter path")
    homedir.mkdir(mode=0o700, exist_ok=True)
    status = _gpg(
        homedir,
        "--status-fd=1",
        "--passphrase=",
        *_faked_time(created),
        "--quick-gen-key",
        f"{name} <test@example.invalid>",
        "ed25519",
        "sign",
        expire,
    )
    fingerprint = _created_fingerprint(status)
    public_key = directory / f"{fingerprint}.asc"
    public_key.write_bytes(_gpg(homedir, "--armor", "--export", fingerprint))
    return TestKey(homedir, fingerprint, public_key)


def add_signing_subkey(key: TestKey) -> str:
    """Add a signing subkey (gpg then signs with it), re-export the key, return the subkey's fpr."""
    status = _gpg(
        key.homedir,
        "--status-fd=1",
        "--passphrase=",
        "--quick-add-key",
        key.fingerprint,
        "ed25519",
        "sign",
        "0",
    )
    key.public_key.write_bytes(_gpg(key.homedir, "--armor", "--export", key.fingerprint))
    return _created_fingerprint(status)


def clearsign(
    key: TestKey,
    text: bytes,
    *,
    also: Sequence[TestKey] = (),
    at: int | None = None,
    digest: str = "SHA256",
) -> bytes:
    """Clearsign `text` with `key` (and `also`, made in the same directory), optionally at `at`."""
    signers = [arg for signer in (key, *also) for arg in ("--local-user", signer.fingerprint)]
    options = [*signers, *_faked_time(at), f"--digest-algo={digest}"]
    return _gpg(key.homedir, *options, "--clearsign", stdin=text)


def detach_sign(key: TestKey, data: bytes, *, armor: bool = True, at: int | None = None) -> bytes:
    """A detached signature over `data`; armored by default, like Ubuntu's SHA256SUMS.gpg."""
    options = ["--armor"] if armor else []
    return _gpg(
        key.homedir,
        "--local-user",
        key.fingerprint,
        *options,
        *_faked_time(at),
        "--detach-sign",
        stdin=data,
    )


def revoke(key: TestKey) -> TestKey:
    """Revoke `key` with the certificate gpg stored at creation; sign with it before this."""
    stored = key.homedir / "openpgp-revocs.d" / f"{key.fingerprint}.rev"
    # gpg prefixes the armor line with ':' so that the certificate is not imported by accident.
    certificate = stored.read_bytes().replace(b"\n:-----BEGIN", b"\n-----BEGIN")
    _gpg(key.homedir, "--import", stdin=certificate)
    public_key = key.public_key.with_name(f"{key.fingerprint}-revoked.asc")
    public_key.write_bytes(_gpg(key.homedir, "--armor", "--export", key.fingerprint))
    return dataclasses.replace(key, public_key=public_key)


def _faked_time(epoch: int | None) -> list[str]:
    return [] if epoch is None else [f"--faked-system-time={epoch}!"]


def _created_fingerprint(status: bytes) -> str:
    for line in status.decode().splitlines():
        if line.startswith("[GNUPG:] KEY_CREATED "):
            return line.split()[-1]
    raise RuntimeError(f"gpg created no key: {status!r}")


# What gpg says when it reached an agent that the previous call's `--kill` was still stopping.
_AGENT_RACE = (b"Connection reset by peer", b"No agent running", b"IPC connect call failed")


def _gpg(homedir: Path, *args: str, stdin: bytes = b"") -> bytes:
    """Run gpg in batch mode on `homedir`, then stop the gpg-agent it may have started.

    `gpgconf --kill` returns before the agent is gone, so the next call can meet the dying agent;
    that race (and only that) is retried.
    """
    for _ in range(3):
        done = _gpg_once(homedir, *args, stdin=stdin)
        if done.returncode == 0 or not any(text in done.stderr for text in _AGENT_RACE):
            break
    if done.returncode != 0:
        raise RuntimeError(f"gpg {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


def _gpg_once(homedir: Path, *args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    command = ["gpg", "--homedir", str(homedir), "--batch", "--yes", "--pinentry-mode=loopback"]
    try:
        done = subprocess.run(
            [*command, *args], input=stdin, capture_output=True, timeout=60, check=False
        )
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(homedir), "--kill", "gpg-agent"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    return done

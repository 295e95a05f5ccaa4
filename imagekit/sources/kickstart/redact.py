"""A kickstart's secrets, kept out of what a build records: its text, console log and errors.

Passwords (``rootpw``, ``sshpw``, ``user --password``, ``bootloader --password``), LUKS
passphrases (``--passphrase``) and the like are replaced by ``<redacted>`` in the kickstart the
image records (config and evidence blob), and the same values are cut from the installer's
console log and error messages before they are stored or shown. Crypted values
(``--iscrypted``) count too: a SHA-512 crypt hash can still be cracked offline. A value is
redacted wherever it appears (a %post that echoes it, the console), so a password that is also
a common word takes that word with it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

REDACTED = "<redacted>"
_ARGUMENT_IS_SECRET = {"rootpw", "sshpw"}  # the password is the command's plain argument
_SECRET_OPTIONS = {
    "--password",
    "--passphrase",
    "--md5pass",
    "--wpakey",
    "--activation-key",
    "--one-time-password",
}
_VALUE_OPTIONS = {"--username"}  # sshpw's: its value is a name, not the password
_SECTION = re.compile(r"\s*%(?!end\b|include\b|ksappend\b)\S")


@dataclass(frozen=True)
class Redacted:
    """The kickstart as it may be recorded, and the secret values taken out of it."""

    text: str
    secrets: tuple[str, ...]

    def scrub(self, text: str) -> str:
        """``text`` (a console log, an error) with every secret value of the kickstart cut."""
        return _scrub(text, self.secrets)


def redact(kickstart: str) -> Redacted:
    """The secrets of every command line (outside %sections), then each one wherever it is."""
    lines, found = [], set()
    in_section = False
    for line in kickstart.split("\n"):
        stripped = line.strip()
        if in_section:
            in_section = stripped != "%end" and not stripped.startswith("%end ")
        elif _SECTION.match(line):
            in_section = True
        elif stripped and not stripped.startswith("#"):
            line, secrets = _command(line)
            found.update(secrets)
        lines.append(line)
    # Longest first, so a secret containing another is cut whole.
    ordered = tuple(sorted(found, key=len, reverse=True))
    return Redacted(_scrub("\n".join(lines), ordered), ordered)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def _command(line: str) -> tuple[str, list[str]]:
    """One command line with its secret values redacted, and those values."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # validated kickstarts do not get here; withhold rather than guess
        return f"# {REDACTED} (a line imagekit could not read)", []
    if not words:
        return line, []
    secrets: list[str] = []
    out = [words[0]]
    i = 1
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if name in _SECRET_OPTIONS and eq:
            secrets.append(value)
            out.append(f"{name}={REDACTED}")
        elif word in _SECRET_OPTIONS and i + 1 < len(words):
            secrets.append(words[i + 1])
            out += [word, REDACTED]
            i += 1
        elif word in _VALUE_OPTIONS and i + 1 < len(words):
            out += [word, words[i + 1]]
            i += 1
        elif words[0] in _ARGUMENT_IS_SECRET and not word.startswith("-"):
            secrets.append(word)
            out.append(REDACTED)
        else:
            out.append(word)
        i += 1
    secrets = [s for s in secrets if s]
    return (shlex.join(out) if secrets else line), secrets

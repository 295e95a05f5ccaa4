"""sshd's effective setting of a keyword, as sshd reads its configuration: first value wins.

``/etc/ssh/sshd_config`` is read line by line; ``Include`` reads the files its globs match
(relative ones under ``/etc/ssh``, in sorted order) at that point, which is how Fedora's and
Debian's ``Include /etc/ssh/sshd_config.d/*.conf`` at the top lets a drop-in override the main
file. A ``Match`` block applies to some connections only, so reading a file stops there. A
keyword set nowhere has sshd's compiled-in default (``SSHD_DEFAULTS``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

SSHD_CONFIG = "/etc/ssh/sshd_config"
# OpenSSH's defaults for the keywords profiles read, as sshd_config(5) of OpenSSH 7.0 and later
# states them (PermitRootLogin became prohibit-password in 7.0).
SSHD_DEFAULTS = {
    "permitrootlogin": "prohibit-password",
    "passwordauthentication": "yes",
    "pubkeyauthentication": "yes",
    "kbdinteractiveauthentication": "yes",
    "permitemptypasswords": "no",
    "x11forwarding": "no",
}
MAX_DEPTH = 16  # sshd's own limit on nested Include is 16 as well

ReadText = Callable[[str], str | None]  # a guest path -> its text, None if it is no file
Expand = Callable[[str], list[str]]  # a guest glob -> the paths it matches


@dataclass(frozen=True)
class Setting:
    """The value sshd uses, and where it comes from (a file, or ``default``)."""

    value: str | None
    origin: str


def sshd_setting(keyword: str, read_text: ReadText, expand: Expand) -> Setting | None:
    """The keyword's effective value; None when there is no sshd_config at all."""
    text = read_text(SSHD_CONFIG)
    if text is None:
        return None
    found = _first(keyword.lower(), SSHD_CONFIG, text, read_text, expand, 0)
    if found is not None:
        return found
    default = SSHD_DEFAULTS.get(keyword.lower())
    return Setting(default, "default" if default else "unset")


def _first(
    keyword: str, path: str, text: str, read_text: ReadText, expand: Expand, depth: int
) -> Setting | None:
    for line in text.splitlines():
        words = re.split(r"[\s=]+", line.strip(), maxsplit=1)
        name = words[0].lower()
        if not name or name.startswith("#") or len(words) < 2:
            continue
        if name == "match":
            return None
        if name == keyword:
            return Setting(words[1].split()[0].strip('"'), path)
        if name == "include" and depth < MAX_DEPTH:
            for included in _included(words[1], expand):
                inner = read_text(included)
                if inner is not None:
                    found = _first(keyword, included, inner, read_text, expand, depth + 1)
                    if found is not None:
                        return found
    return None


def _included(patterns: str, expand: Expand) -> list[str]:
    paths: list[str] = []
    for pattern in patterns.split():
        absolute = pattern if pattern.startswith("/") else f"/etc/ssh/{pattern}"
        paths += sorted(expand(absolute))
    return paths

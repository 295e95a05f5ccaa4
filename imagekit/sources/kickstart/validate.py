"""Kickstart text, checked before anything is fetched or booted.

The kickstart is rendered (only ``{name}``, ``{version}``, ``{arch}``) and validated with
pykickstart, warnings counting as errors as ``ksvalidator`` treats them, and refused if it would
wait for a human at the console.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from imagekit.errors import RecipeError
from imagekit.recipe import KickstartSource

_PLACEHOLDER = re.compile(r"\{(name|version|arch)\}")
# A script that opens a terminal or switches to one is waiting for a person at the console
# (the usual `exec < /dev/tty6 > /dev/tty6; chvt 6` prompt in %pre).
_INTERACTIVE = re.compile(r"/dev/tty|\bchvt\b")
_INCLUDE = re.compile(r"^\s*%(include|ksappend)\b", re.MULTILINE)


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill ``{name}``, ``{version}``, ``{arch}`` only: shell braces in %post stay as written."""
    return _PLACEHOLDER.sub(lambda m: values[m[1]], text)


def syntax_version(source: KickstartSource, recipe_version: str) -> str:
    """The pykickstart handler: ``syntax``, else F<version>, else the newest Fedora known."""
    from pykickstart.version import versionMap  # type: ignore[import-untyped]

    if source.syntax:
        if source.syntax not in versionMap:
            raise RecipeError(
                f"kickstart syntax {source.syntax!r} is unknown to pykickstart; "
                f"known: {', '.join(sorted(versionMap))}"
            )
        return source.syntax
    if f"F{recipe_version}" in versionMap:
        return f"F{recipe_version}"
    # A release newer than this pykickstart (or a version that is no Fedora release number):
    # the newest Fedora syntax it knows is the closest check available.
    return f"F{max(int(k[1:]) for k in versionMap if re.fullmatch(r'F[0-9]+', k))}"


def validate(text: str, syntax: str, *, force: bool = False, where: str = "kickstart") -> None:
    """Parse ``text`` as ``syntax``; refuse errors, warnings and (unless ``force``) human waits."""
    from pykickstart.errors import KickstartError, KickstartParseWarning  # type: ignore[import-untyped]
    from pykickstart.parser import KickstartParser  # type: ignore[import-untyped]
    from pykickstart.version import makeVersion

    handler = makeVersion(syntax)
    parser = KickstartParser(handler, followIncludes=False, errorsAreFatal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KickstartParseWarning)
        try:
            parser.readKickstartFromString(text)
        except (KickstartError, KickstartParseWarning) as exc:
            lineno = getattr(exc, "lineno", None) or _line_of(text, handler)
            message = str(getattr(exc, "message", "") or exc).strip()
            at = f"line {lineno}: " if lineno else ""
            raise RecipeError(
                f"{where}: {at}{message} (pykickstart {syntax}; warnings count as errors, "
                "as in ksvalidator)"
            ) from exc
    if force:
        return
    problems = [*_waits_for_human(handler, text)]
    if problems:
        raise RecipeError(
            f"{where}: this kickstart would stop for a person at the console: "
            + "; ".join(problems)
            + ". Fix it, or set force = true in [source] to boot it anyway"
        )


def _line_of(text: str, handler: Any) -> int | None:
    """The line a warning came from: pykickstart keeps the line it was reading, not its number."""
    current = (getattr(handler, "currentLine", "") or "").strip()
    for number, line in enumerate(text.splitlines(), 1):
        if current and line.strip() == current:
            return number
    return None


def _waits_for_human(handler: Any, text: str) -> Iterator[str]:
    from pykickstart.constants import DISPLAY_MODE_GRAPHICAL, KS_WAIT  # type: ignore[import-untyped]

    mode = handler.displaymode
    if not mode.seen or mode.displayMode == DISPLAY_MODE_GRAPHICAL:
        yield "it needs `text` (or `cmdline`), or Anaconda starts its graphical interface"
    if getattr(handler, "vnc", None) is not None and handler.vnc.enabled:
        yield "`vnc` waits for a VNC client"
    action = handler.reboot
    if not action.seen or action.action == KS_WAIT:
        yield "it needs `reboot` or `poweroff`, or Anaconda waits for a key press at the end"
    elif getattr(action, "kexec", False):
        yield "`reboot --kexec` restarts inside the VM instead of ending it"
    if _INCLUDE.search(text):
        yield "%include/%ksappend read files the build key cannot see; inline them"
    for script in handler.scripts:
        if _INTERACTIVE.search(script.script):
            yield f"the script at line {script.lineno} reads from a terminal"

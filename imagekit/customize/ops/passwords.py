"""Passwords by virt-builder selector, SHA-512-crypt hashed straight into /etc/shadow."""

from __future__ import annotations

import secrets
import string
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from imagekit.core.digest import sha256_bytes
from imagekit.customize.context import Context, local_path
from imagekit.customize.spec import USERNAME, ArgKind, OperationSpec, each
from imagekit.errors import CustomizeError, RecipeError

SALT = string.ascii_letters + string.digits + "./"
PASSWORD_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class _Selector:
    """A virt-builder password selector: file:PATH, password:SECRET, random, disabled, locked:…"""

    kind: str
    value: str
    locked: bool


def _selector(text: str) -> _Selector:
    locked = text == "locked" or text.startswith("locked:")
    rest = "disabled" if text == "locked" else text.removeprefix("locked:") if locked else text
    kind, _, value = rest.partition(":")
    if kind in ("random", "disabled") and not value:
        return _Selector(kind, "", locked)
    if kind in ("file", "password") and value:
        return _Selector(kind, value, locked)
    raise ValueError(
        "expected file:PATH, password:SECRET, random, disabled or locked:<one of those>"
    )


def _split_user(value: str) -> tuple[str, str]:
    user, sep, selector = value.partition(":")
    if not sep or not USERNAME.fullmatch(user):
        raise ValueError("expected USER:SELECTOR, e.g. alice:file:alice.password")
    return user, selector


def _check_password(value: str) -> None:
    _selector(_split_user(value)[1])


def _read_first_line(path: Path) -> str:
    try:
        line = next(iter(path.read_text().splitlines()), "")
    except OSError as e:
        raise RecipeError(f"cannot read the password file {path}: {e.strerror}") from e
    if not line:
        raise RecipeError(f"the password file {path} has an empty first line")
    return line


def _selector_canon(text: str, base_dir: Path) -> object:
    """The secret's sha256, so a file and the same password written out give the same key."""
    sel = _selector(text)
    prefix = "locked:" if sel.locked else ""
    if sel.kind == "file":
        secret = _read_first_line(local_path(sel.value, base_dir))
    elif sel.kind == "password":
        secret = sel.value
    else:
        return prefix + sel.kind
    return prefix + sha256_bytes(secret.encode())


def _selector_shown(text: str) -> str:
    sel = _selector(text)
    return ("locked:" if sel.locked else "") + (
        sel.kind if sel.kind in ("random", "disabled") else "set"
    )


def _selector_secret(text: str) -> str | None:
    """What ``password:SECRET`` spells out; a file's or a random password is not in the text."""
    sel = _selector(text)
    return sel.value if sel.kind == "password" else None


def _password_secret(value: str) -> str | None:
    return _selector_secret(_split_user(value)[1])


def _password_canon(value: str, base_dir: Path) -> object:
    user, selector = _split_user(value)
    return f"{user}:{_selector_canon(selector, base_dir)}"


def _password_shown(value: str) -> str:
    user, selector = _split_user(value)
    return f"{user}:{_selector_shown(selector)}"


def sha512_crypt(password: str) -> str:
    """A ``$6$`` hash as /etc/shadow wants: crypt(3) where Python has it, else openssl."""
    salt = "".join(secrets.choice(SALT) for _ in range(16))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError:  # Python 3.13 removed crypt
        done = subprocess.run(
            ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
            input=password,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise CustomizeError(f"openssl cannot hash a password: {done.stderr.strip()}") from None
        return done.stdout.strip()
    return crypt.crypt(password, f"$6${salt}$")


def _shadow_field(ctx: Context, user: str, sel: _Selector) -> str:
    """The password field for ``sel``; a random password is kept in the result to show once."""
    if sel.kind == "file":
        return sha512_crypt(_read_first_line(ctx.local(sel.value)))
    if sel.kind == "password":
        ctx.result.messages.append(
            f"the password of {user} is written in the recipe in clear; prefer file:PATH or random"
        )
        return sha512_crypt(sel.value)
    if sel.kind == "random":
        secret = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(20))
        ctx.result.generated_passwords[user] = secret
        return sha512_crypt(secret)
    return "*"


def _set_password(ctx: Context, user: str, selector: str) -> None:
    sel = _selector(selector)
    field = _shadow_field(ctx, user, sel)
    rows = ctx.rows("/etc/shadow")
    for row in rows:
        if row[0] == user and len(row) >= 2:
            row[1] = ("!" if sel.locked else "") + field
            ctx.save_rows("/etc/shadow", rows)
            return
    raise CustomizeError(f"user {user!r} has no entry in the guest's /etc/shadow")


def _apply_root_password(ctx: Context, values: tuple[str, ...]) -> None:
    _set_password(ctx, "root", values[0])


def _apply_password(ctx: Context, value: str) -> None:
    _set_password(ctx, *_split_user(value))


# fmt: off
OPERATIONS = (
    OperationSpec("root_password", ArgKind.TEXT, "SELECTOR", "set root's password: file:PATH, "
        "password:SECRET, random, disabled, locked:...", _apply_root_password,
        check=_selector, canon=_selector_canon, shown=_selector_shown, secret=_selector_secret),
    OperationSpec("password", ArgKind.LIST, "USER:SELECTOR", "set a user's password (selectors "
        "as for root_password)", each(_apply_password), check=_check_password,
        canon=_password_canon, shown=_password_shown, secret=_password_secret),
)
# fmt: on

"""Users and their groups, added by editing passwd/shadow/group/gshadow as ``useradd -m -U``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from imagekit.customize.context import Context
from imagekit.customize.spec import USERNAME, ArgKind, OperationSpec, check_guest_path, each
from imagekit.errors import CustomizeError

USER_FORM = "NAME[:uid=N][:groups=G1,G2][:shell=PATH][:home=PATH][:comment=TEXT]"


@dataclass(frozen=True)
class _User:
    name: str
    uid: int | None = None
    groups: tuple[str, ...] = ()
    shell: str | None = None
    home: str | None = None
    comment: str = ""


def _parse_user(value: str) -> _User:
    name, *options = value.split(":")
    if not USERNAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a user name; expected {USER_FORM}")
    fields: dict[str, Any] = {}
    for option in options:
        key, sep, text = option.partition("=")
        if not sep or key not in ("uid", "groups", "shell", "home", "comment") or key in fields:
            raise ValueError(f"bad option {option!r}; expected {USER_FORM}")
        if key == "uid":
            if not text.isdigit():
                raise ValueError(f"uid {text!r} must be a number")
            fields[key] = int(text)
        elif key == "groups":
            fields[key] = tuple(g for g in text.split(",") if g)
        elif key in ("shell", "home"):
            check_guest_path(text)
            fields[key] = text
        else:
            fields[key] = text
    return _User(name, **fields)


def _check_user(value: str) -> None:
    _parse_user(value)


def _free_id(rows: list[list[str]], preferred: int | None = None) -> int:
    used = {int(row[2]) for row in rows if len(row) > 2 and row[2].isdigit()}
    if preferred is not None and preferred not in used:
        return preferred
    return max((i for i in used if 1000 <= i < 60000), default=999) + 1


def _add_member(rows: list[list[str]], groups: tuple[str, ...], user: str) -> None:
    """Add ``user`` to the member list, the 4th field of group and gshadow lines alike."""
    for row in rows:
        if row[0] in groups:
            row += [""] * (4 - len(row))
            row[3] = ",".join([m for m in row[3].split(",") if m] + [user])


def _apply_user(ctx: Context, value: str) -> None:
    """Add an account by editing passwd/shadow/group(/gshadow) as useradd -m -U would."""
    g, user = ctx.g, _parse_user(value)
    passwd, group = ctx.rows("/etc/passwd"), ctx.rows("/etc/group")
    if any(row[0] == user.name for row in passwd):
        raise CustomizeError(f"user {user.name!r} already exists in the guest")
    missing = [name for name in user.groups if not any(row[0] == name for row in group)]
    if missing:
        raise CustomizeError(
            f"user {user.name}: the guest has no group {', '.join(missing)} (see /etc/group)"
        )
    uid = _free_id(passwd, user.uid)
    if user.uid is not None and uid != user.uid:
        raise CustomizeError(f"user {user.name}: uid {user.uid} is already taken in the guest")
    own = next((row for row in group if row[0] == user.name), None)
    gid = int(own[2]) if own else _free_id(group, uid)
    if own is None:
        group.append([user.name, "x", str(gid), ""])
    _add_member(group, user.groups, user.name)
    home = user.home or f"/home/{user.name}"
    shell = user.shell or ("/bin/bash" if g.exists("/bin/bash") else "/bin/sh")
    passwd.append([user.name, "x", str(uid), str(gid), user.comment, home, shell])
    days = str(int(time.time()) // 86400)
    shadow = [*ctx.rows("/etc/shadow"), [user.name, "!", days, "0", "99999", "7", "", "", ""]]
    ctx.save_rows("/etc/passwd", passwd)
    ctx.save_rows("/etc/group", group)
    ctx.save_rows("/etc/shadow", shadow)
    if g.is_file("/etc/gshadow"):
        gshadow = ctx.rows("/etc/gshadow")
        if own is None:
            gshadow.append([user.name, "!", "", ""])
        _add_member(gshadow, user.groups, user.name)
        ctx.save_rows("/etc/gshadow", gshadow)
    _make_home(ctx, home, uid, gid)


def _make_home(ctx: Context, home: str, uid: int, gid: int) -> None:
    """A new home from /etc/skel, owned by the user, mode 0700; an existing one is left alone."""
    g = ctx.g
    if g.exists(home):
        return
    g.mkdir_p(home)
    if g.is_dir("/etc/skel"):
        for entry in g.ls("/etc/skel"):
            g.cp_a(f"/etc/skel/{entry}", home)
    for path in [home, *(f"{home}/{rel}" for rel in g.find(home))]:
        g.lchown(uid, gid, path)
    g.chmod(0o700, home)


OPERATIONS = (
    OperationSpec(
        "user",
        ArgKind.LIST,
        USER_FORM,
        "add a user, its own group and home (from /etc/skel), password locked",
        each(_apply_user),
        check=_check_user,
    ),
)

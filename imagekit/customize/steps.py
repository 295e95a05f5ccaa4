"""Customization steps: one table of operations drives recipe parsing, CLI flags, docs and apply.

Names and meanings follow virt-customize(1) and virt-sysprep(1). A step's operations run in the
order of ``OPERATIONS`` (not the order they were written), so a step means the same thing
however its TOML table is laid out, and its canonical form is a stable build key.
Everything is done through libguestfs file calls, so it works on any Linux guest; only
``run_command`` and ``install`` execute guest programs.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import secrets
import shlex
import string
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagekit.customize.firstboot import (
    FIRSTBOOT_DIR,
    FIRSTBOOT_LOG,
    FIRSTBOOT_UNIT,
    FIRSTBOOT_WANTS,
)
from imagekit.errors import CustomizeError, RecipeError
from imagekit.guest.tarball import pack
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress

STEP_CODE_VERSION = "1"
"""Part of every build key: bump it when the behaviour of apply_step changes for all operations
(bump an operation's own ``version`` when only that one changes)."""


class ArgKind(enum.Enum):
    """How a value is written in TOML (and how often its CLI flag may be given)."""

    FLAG = "bool"
    TEXT = "string"
    LIST = "list of strings"
    CSV = "list of strings, commas split"


@dataclass(frozen=True)
class Operation:
    """One operation of a step: ``arg`` is True, a string or a tuple of strings by ArgKind."""

    name: str
    arg: str | bool | tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """Operations in the table's application order."""

    operations: tuple[Operation, ...]

    def get(self, name: str) -> Operation | None:
        return next((op for op in self.operations if op.name == name), None)


@dataclass
class StepResult:
    """What a caller shows the user: notes, random passwords (shown once, never stored), output."""

    messages: list[str] = field(default_factory=list)
    generated_passwords: dict[str, str] = field(default_factory=dict)
    command_output: list[str] = field(default_factory=list)


@dataclass
class _Context:
    g: Any
    base_dir: Path
    result: StepResult

    def local(self, text: str) -> Path:
        return _local(text, self.base_dir)

    def read(self, path: str) -> str:
        return bytes(self.g.read_file(path)).decode("utf-8", "surrogateescape")

    def write(self, path: str, text: str) -> None:
        self.g.write(path, text.encode("utf-8", "surrogateescape"))

    def rows(self, path: str) -> list[list[str]]:
        """An /etc/passwd-style file as fields; split and join on ':' round-trip every line."""
        return [line.split(":") for line in self.read(path).splitlines()]

    def save_rows(self, path: str, rows: list[list[str]]) -> None:
        self.write(path, "".join(":".join(row) + "\n" for row in rows))

    def account(self, user: str) -> tuple[int, int, str]:
        """uid, gid and home of an existing guest user."""
        for row in self.rows("/etc/passwd"):
            if row[0] == user and len(row) >= 6:
                return int(row[2]), int(row[3]), row[5]
        raise CustomizeError(
            f"user {user!r} does not exist in the guest's /etc/passwd; create it with "
            f'`user = ["{user}"]` in this or an earlier step'
        )


Apply = Callable[[_Context, tuple[str, ...]], None]


def _literal(value: str, base_dir: Path) -> object:
    return value


def _shown(value: str) -> str:
    return value


def _no_check(value: str) -> None:
    pass


@dataclass(frozen=True)
class OperationSpec:
    """One row of the table. ``apply`` None: handled outside apply_step (size, network)."""

    name: str
    kind: ArgKind
    metavar: str
    help: str
    apply: Apply | None
    check: Callable[[str], object] = _no_check  # raises ValueError; run at parse time
    canon: Callable[[str, Path], object] = _literal  # build-key form: secrets/files hashed
    shown: Callable[[str], str] = _shown  # manifest and progress form: secrets as "set"
    network: bool = False
    version: int = 1

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _each(fn: Callable[[_Context, str], None]) -> Apply:
    def apply(ctx: _Context, values: tuple[str, ...]) -> None:
        for value in values:
            fn(ctx, value)

    return apply


# --- value checks (run by parse_step, so mistakes surface before any launch) ---------------

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
ZONE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
USERNAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?")
PACKAGE = re.compile(r"[A-Za-z0-9_.+:@=<>~*][A-Za-z0-9_.+:@=<>~*/-]*")
SIZE = re.compile(r"(\+?)(\d+)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
SALT = string.ascii_letters + string.digits + "./"
PASSWORD_ALPHABET = string.ascii_letters + string.digits


def _split(value: str, parts: int, form: str) -> list[str]:
    fields = value.split(":", parts - 1)
    if len(fields) != parts or not all(fields):
        raise ValueError(f"expected {form}")
    return fields


def _guest_path(path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"guest path {path!r} must be absolute")


def _check_file_colon(form: str) -> Callable[[str], None]:
    """For FILE:REST values whose first part is a guest path."""

    def check(value: str) -> None:
        if ":" not in value:
            raise ValueError(f"expected {form}")
        _guest_path(value.split(":", 1)[0])

    return check


def _check_local_remote(form: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        _guest_path(_split(value, 2, form)[1])

    return check


def _check_hostname(value: str) -> None:
    if not HOSTNAME.fullmatch(value):
        raise ValueError("not a valid hostname (letters, digits, '-' and '.', at most 253)")


def _check_zone(value: str) -> None:
    if not ZONE.fullmatch(value):
        raise ValueError("expected a zone name like Europe/Berlin")


def _check_package(value: str) -> None:
    if not PACKAGE.fullmatch(value):
        raise ValueError(f"{value!r} is not a package name")


def _check_chmod(value: str) -> None:
    mode, path = _split(value, 2, "PERMISSIONS:FILE, e.g. 0755:/usr/local/bin/tool")
    if not re.fullmatch(r"[0-7]{1,4}", mode):
        raise ValueError(f"permissions {mode!r} must be octal, e.g. 0644")
    _guest_path(path)


def _check_link(value: str) -> None:
    target, *links = value.split(":")
    if not target or not links:
        raise ValueError("expected TARGET:LINK[:LINK...]")
    for link in links:
        _guest_path(link)


def _check_run(value: str) -> None:
    if not value.strip():
        raise ValueError("empty command")


def _parse_size(value: str) -> tuple[bool, int]:
    match = SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError("expected a size like 20G or +2G (suffixes K, M, G, T are powers of 1024)")
    power = " KMGT".index(match[3].upper() or " ")
    return bool(match[1]), int(match[2]) << (10 * power)


def _check_size(value: str) -> None:
    _parse_size(value)


# --- passwords --------------------------------------------------------------------------------


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
    sel = _selector(text)
    prefix = "locked:" if sel.locked else ""
    if sel.kind == "file":
        secret = _read_first_line(_local(sel.value, base_dir))
    elif sel.kind == "password":
        secret = sel.value
    else:
        return prefix + sel.kind
    return prefix + "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def _selector_shown(text: str) -> str:
    sel = _selector(text)
    return ("locked:" if sel.locked else "") + (
        sel.kind if sel.kind in ("random", "disabled") else "set"
    )


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


def _set_password(ctx: _Context, user: str, selector: str) -> None:
    sel = _selector(selector)
    if sel.kind == "file":
        field_ = sha512_crypt(_read_first_line(ctx.local(sel.value)))
    elif sel.kind == "password":
        ctx.result.messages.append(
            f"the password of {user} is written in the recipe in clear; prefer file:PATH or random"
        )
        field_ = sha512_crypt(sel.value)
    elif sel.kind == "random":
        secret = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(20))
        ctx.result.generated_passwords[user] = secret
        field_ = sha512_crypt(secret)
    else:
        field_ = "*"
    rows = ctx.rows("/etc/shadow")
    for row in rows:
        if row[0] == user and len(row) >= 2:
            row[1] = ("!" if sel.locked else "") + field_
            ctx.save_rows("/etc/shadow", rows)
            return
    raise CustomizeError(f"user {user!r} has no entry in the guest's /etc/shadow")


def _apply_root_password(ctx: _Context, values: tuple[str, ...]) -> None:
    _set_password(ctx, "root", values[0])


def _apply_password(ctx: _Context, value: str) -> None:
    _set_password(ctx, *_split_user(value))


# --- users ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _User:
    name: str
    uid: int | None = None
    groups: tuple[str, ...] = ()
    shell: str | None = None
    home: str | None = None
    comment: str = ""


USER_FORM = "NAME[:uid=N][:groups=G1,G2][:shell=PATH][:home=PATH][:comment=TEXT]"


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
            _guest_path(text)
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


def _apply_user(ctx: _Context, value: str) -> None:
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
    if not g.exists(home):
        g.mkdir_p(home)
        if g.is_dir("/etc/skel"):
            for entry in g.ls("/etc/skel"):
                g.cp_a(f"/etc/skel/{entry}", home)
        for path in [home, *(f"{home}/{rel}" for rel in g.find(home))]:
            g.lchown(uid, gid, path)
        g.chmod(0o700, home)


# --- ssh keys ---------------------------------------------------------------------------------

SSH_FORM = "USER:file:PATH or USER:string:KEY"


def _ssh_parts(value: str) -> tuple[str, str, str]:
    user, kind, key = _split(value, 3, SSH_FORM)
    if kind not in ("file", "string") or not USERNAME.fullmatch(user):
        raise ValueError(f"expected {SSH_FORM}")
    return user, kind, key


def _ssh_keys(value: str, base_dir: Path) -> tuple[str, list[str]]:
    user, kind, key = _ssh_parts(value)
    if kind == "file":
        path = _local(key, base_dir)
        try:
            key = path.read_text()
        except OSError as e:
            raise RecipeError(f"ssh_inject: cannot read the key file {path}: {e.strerror}") from e
    keys = [line.strip() for line in key.splitlines() if line.strip()]
    if not keys:
        raise RecipeError(f"ssh_inject for {user}: the key is empty")
    return user, keys


def _ssh_canon(value: str, base_dir: Path) -> object:
    user, keys = _ssh_keys(value, base_dir)
    return f"{user}:sha256:{hashlib.sha256(chr(10).join(keys).encode()).hexdigest()}"


def _apply_ssh_inject(ctx: _Context, value: str) -> None:
    g = ctx.g
    user, keys = _ssh_keys(value, ctx.base_dir)
    uid, gid, home = ctx.account(user)
    ssh = home.rstrip("/") + "/.ssh"
    if not g.is_dir(ssh):
        g.mkdir_p(ssh)
        g.lchown(uid, gid, ssh)
    g.chmod(0o700, ssh)
    path = f"{ssh}/authorized_keys"
    text = ctx.read(path) if g.exists(path) else ""
    new = [key for key in keys if key not in text.splitlines()]
    if new:
        text += ("\n" if text and not text.endswith("\n") else "") + "".join(k + "\n" for k in new)
        ctx.write(path, text)
    g.lchown(uid, gid, path)
    g.chmod(0o600, path)


# --- files ------------------------------------------------------------------------------------


def _local(text: str, base_dir: Path) -> Path:
    """A host path from a recipe: ``~`` expanded, relative to the recipe's directory."""
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else base_dir / path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree_digest(root: Path) -> str:
    """Hash of names, types, modes, contents and link targets: what copy_in puts in the guest."""
    digest = hashlib.sha256()
    paths = [root, *sorted(root.rglob("*"))] if root.is_dir() and not root.is_symlink() else [root]
    for path in paths:
        rel = path.relative_to(root.parent).as_posix()
        st = path.lstat()
        if path.is_symlink():
            entry = f"l {rel} {os.readlink(path)}"
        elif path.is_dir():
            entry = f"d {rel} {st.st_mode & 0o7777:o}"
        else:
            entry = f"f {rel} {st.st_mode & 0o7777:o} {_sha256_file(path)}"
        digest.update(entry.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def _existing(path: Path, op: str) -> Path:
    if not path.exists():
        raise RecipeError(f"{op}: the local path {path} does not exist")
    return path


def _upload_canon(value: str, base_dir: Path) -> object:
    local, dest = value.split(":", 1)
    path = _existing(_local(local, base_dir), "upload")
    mode = path.stat().st_mode & 0o7777
    return {"sha256": _sha256_file(path), "name": path.name, "mode": f"{mode:04o}", "dest": dest}


def _copy_in_canon(value: str, base_dir: Path) -> object:
    local, dest = value.split(":", 1)
    return {"tree": _tree_digest(_existing(_local(local, base_dir), "copy_in")), "dest": dest}


def _apply_upload(ctx: _Context, value: str) -> None:
    g = ctx.g
    local, dest = value.split(":", 1)
    path = _existing(ctx.local(local), "upload")
    if g.is_dir(dest):
        dest = dest.rstrip("/") + "/" + path.name
    g.upload(str(path), dest)
    g.lchown(0, 0, dest)
    g.chmod(path.stat().st_mode & 0o7777, dest)


def _apply_copy_in(ctx: _Context, value: str) -> None:
    local, dest = value.split(":", 1)
    path = _existing(ctx.local(local), "copy_in")
    if not ctx.g.is_dir(dest):
        raise CustomizeError(f"copy_in: the guest has no directory {dest}; create it with mkdir")
    with tempfile.TemporaryDirectory(prefix="imagekit-copy-in-") as tmp:
        tarball = Path(tmp) / "copy.tar"
        pack([(path, path.name)], tarball, owner=(0, 0))
        ctx.g.tar_in(str(tarball), dest)


def _apply_write(ctx: _Context, value: str) -> None:
    path, content = value.split(":", 1)
    ctx.write(path, content)


def _apply_append_line(ctx: _Context, value: str) -> None:
    """As virt-customize: end the file's last line first, reuse its line ending (LF or CRLF)."""
    path, line = value.split(":", 1)
    text = ctx.read(path) if ctx.g.exists(path) else ""
    newline = "\r\n" if "\r\n" in text else "\n"
    if text and not text.endswith("\n"):
        text += newline
    ctx.write(path, text + line + newline)


def _apply_link(ctx: _Context, value: str) -> None:
    target, *links = value.split(":")
    for link in links:
        ctx.g.ln_sf(target, link)


def _apply_chmod(ctx: _Context, value: str) -> None:
    mode, path = value.split(":", 1)
    ctx.g.chmod(int(mode, 8), path)


def _delete_globs(ctx: _Context, patterns: tuple[str, ...] | list[str]) -> None:
    for pattern in patterns:
        for path in ctx.g.glob_expand(pattern):
            ctx.g.rm_rf(path)


# --- system settings --------------------------------------------------------------------------


def _apply_hostname(ctx: _Context, values: tuple[str, ...]) -> None:
    name = values[0]
    ctx.write("/etc/hostname", name + "\n")
    if ctx.g.is_file("/etc/sysconfig/network"):  # RHEL 6 and older read it from here
        lines = ctx.read("/etc/sysconfig/network").splitlines()
        lines = [ln for ln in lines if not ln.startswith("HOSTNAME=")] + [f"HOSTNAME={name}"]
        ctx.write("/etc/sysconfig/network", "\n".join(lines) + "\n")


def _apply_timezone(ctx: _Context, values: tuple[str, ...]) -> None:
    zone = values[0]
    target = f"/usr/share/zoneinfo/{zone}"
    if not ctx.g.is_file(target, followsymlinks=True):
        raise CustomizeError(
            f"timezone: the guest has no {target}; use a name like Europe/Berlin and make sure "
            "tzdata is installed in the image"
        )
    ctx.g.rm_f("/etc/localtime")
    ctx.g.ln_s(target, "/etc/localtime")
    if ctx.g.is_file("/etc/timezone"):  # Debian and Ubuntu keep the name here too
        ctx.write("/etc/timezone", zone + "\n")


def _sh(ctx: _Context, command: str, what: str) -> str:
    try:
        output = str(ctx.g.sh(command))
    except RuntimeError as e:
        raise CustomizeError(f"{what} failed in the guest: {e}") from e
    ctx.result.command_output.append(output)
    return output


def _run_command(ctx: _Context, command: str) -> None:
    _sh(ctx, command, f"run_command {command!r}")


INSTALL_COMMANDS = {
    "dnf": "dnf -y install {}",
    "yum": "yum -y install {}",
    "apt": "apt-get -q -y update && DEBIAN_FRONTEND=noninteractive apt-get -q -y "
    "-o Dpkg::Options::=--force-confnew install {}",
    "zypper": "zypper -n install -l {}",
    "apk": "apk update && apk add {}",
    "pacman": "pacman -Sy --noconfirm {}",
}


def _apply_install(ctx: _Context, packages: tuple[str, ...]) -> None:
    if not ctx.g.get_network():
        raise CustomizeError(
            "install needs guest network, but the appliance was launched without it: launch "
            "with network=needs_network(step), on a host that reaches the guest's mirrors"
        )
    manager = ctx.g.inspect_get_package_management(ctx.g.inspect_get_roots()[0])
    if manager not in INSTALL_COMMANDS:
        raise CustomizeError(
            f"install: imagekit cannot drive the guest's package manager ({manager}); "
            "use run_command instead"
        )
    command = INSTALL_COMMANDS[manager].format(" ".join(map(shlex.quote, packages)))
    _sh(ctx, command, f"install with {manager} (check that the host has network)")


def _firstboot(ctx: _Context, command: str) -> None:
    """A numbered script under FIRSTBOOT_DIR, run once by a systemd unit, as virt-customize."""
    g = ctx.g
    scripts = f"{FIRSTBOOT_DIR}/scripts"
    g.mkdir_p(scripts)
    g.mkdir_p(f"{FIRSTBOOT_DIR}/scripts-done")
    number = len(g.ls(scripts)) + len(g.ls(f"{FIRSTBOOT_DIR}/scripts-done")) + 1
    script = f"{scripts}/{number:04d}-imagekit"
    ctx.write(script, f"#!/bin/sh\n{command}\n")
    g.chmod(0o755, script)
    ctx.write(f"{FIRSTBOOT_DIR}/firstboot.sh", FIRSTBOOT_SH)
    g.chmod(0o755, f"{FIRSTBOOT_DIR}/firstboot.sh")
    g.mkdir_p(os.path.dirname(FIRSTBOOT_WANTS))
    ctx.write(FIRSTBOOT_UNIT, FIRSTBOOT_SERVICE)
    g.ln_sf(FIRSTBOOT_UNIT, FIRSTBOOT_WANTS)
    if not any(g.exists(p) for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")):
        ctx.result.messages.append(
            f"firstboot_command: the guest has no systemd, so nothing will start {FIRSTBOOT_DIR}"
            "/firstboot.sh at boot"
        )


FIRSTBOOT_SH = f"""#!/bin/sh
# Installed by imagekit: runs each first-boot script once, in order, then moves it away.
d={FIRSTBOOT_DIR}
for script in "$d"/scripts/*; do
    [ -x "$script" ] || continue
    echo "=== $script"
    "$script"
    echo "=== $script exited with $?"
    mv "$script" "$d/scripts-done/"
done >>{FIRSTBOOT_LOG} 2>&1
"""

FIRSTBOOT_SERVICE = f"""[Unit]
Description=imagekit first-boot commands
ConditionPathExistsGlob={FIRSTBOOT_DIR}/scripts/*
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart={FIRSTBOOT_DIR}/firstboot.sh
RemainAfterExit=yes
TimeoutSec=0

[Install]
WantedBy=multi-user.target
"""


def _apply_selinux_relabel(ctx: _Context, values: tuple[str, ...]) -> None:
    """Defer the relabel to the guest's next boot (virt-customize's fallback), like anaconda."""
    config = "/etc/selinux/config"
    if not ctx.g.is_file(config):
        ctx.result.messages.append("selinux_relabel: the guest has no SELinux config; skipped")
        return
    modes = re.findall(r"^\s*SELINUX\s*=\s*(\w+)", ctx.read(config), re.MULTILINE)
    if modes and modes[-1] == "disabled":
        ctx.result.messages.append("selinux_relabel: SELinux is disabled in the guest; skipped")
        return
    ctx.g.touch("/.autorelabel")


# --- sysprep ----------------------------------------------------------------------------------

LOGFILES = (  # noqa: SIM905 - virt-sysprep's list, kept readable
    "/etc/Pegasus/*.cnf /etc/Pegasus/*.crt /etc/Pegasus/*.csr /etc/Pegasus/*.pem "
    "/etc/Pegasus/*.srl /root/anaconda-ks.cfg /root/anaconda-post.log "
    "/root/initial-setup-ks.cfg /root/install.log /root/install.log.syslog "
    "/root/original-ks.cfg /var/cache/fontconfig/* /var/cache/gdm/* /var/cache/man/* "
    "/var/lib/AccountService/users/* /var/lib/fprint/* /var/lib/logrotate.status "
    "/var/log/*.log* /var/log/BackupPC/LOG /var/log/ConsoleKit/* /var/log/anaconda.syslog "
    "/var/log/anaconda/* /var/log/apache2/*_log /var/log/apache2/*_log-* /var/log/apt/* "
    "/var/log/aptitude* /var/log/audit/* /var/log/btmp* /var/log/ceph/*.log "
    "/var/log/chrony/*.log /var/log/cron* /var/log/cups/*_log* /var/log/debug* "
    "/var/log/dmesg* /var/log/exim4/* /var/log/faillog* /var/log/firewalld* /var/log/gdm/* "
    "/var/log/glusterfs/*glusterd.vol.log /var/log/glusterfs/glusterfs.log /var/log/grubby* "
    "/var/log/httpd/*log /var/log/installer/* /var/log/jetty/jetty-console.log "
    "/var/log/journal/* /var/log/lastlog* /var/log/libvirt/libvirtd.log "
    "/var/log/libvirt/libxl/*.log /var/log/libvirt/lxc/*.log /var/log/libvirt/qemu/*.log "
    "/var/log/libvirt/uml/*.log /var/log/lightdm/* /var/log/mail/* /var/log/maillog* "
    "/var/log/messages* /var/log/ntp /var/log/ntpstats/* /var/log/ppp/connect-errors "
    "/var/log/rhsm/* /var/log/sa/* /var/log/secure* /var/log/setroubleshoot/*.log "
    "/var/log/spooler* /var/log/squid/*.log /var/log/syslog* /var/log/tallylog* "
    "/var/log/tuned/tuned.log /var/log/wtmp* /var/log/xferlog* /var/named/data/named.run"
).split()


def _sysprep_machine_id(ctx: _Context) -> None:
    if ctx.g.is_file("/etc/machine-id"):
        ctx.g.truncate("/etc/machine-id")  # empty, not absent: systemd regenerates it at boot
    ctx.g.rm_f("/var/lib/dbus/machine-id")


def _sysprep_net_hwaddr(ctx: _Context) -> None:
    for path in ctx.g.glob_expand("/etc/sysconfig/network-scripts/ifcfg-*"):
        lines = ctx.read(path).splitlines(keepends=True)
        ctx.write(path, "".join(ln for ln in lines if not ln.lstrip().startswith("HWADDR=")))


def _globs(*patterns: str) -> Callable[[_Context], None]:
    return lambda ctx: _delete_globs(ctx, list(patterns))


SYSPREP: Mapping[str, tuple[str, Callable[[_Context], None]]] = {
    "bash-history": (
        "remove ~/.bash_history of root and /home/*",
        _globs("/root/.bash_history", "/home/*/.bash_history"),
    ),
    "dhcp-client-state": (
        "remove DHCP client leases",
        _globs(
            "/var/lib/dhclient/*",
            "/var/lib/dhcp/*",
            "/var/lib/dhcpcd/*",
            "/var/lib/NetworkManager/*.lease",
            "/var/lib/NetworkManager/dhclient-*",
            "/var/lib/NetworkManager/internal-*",
            "/var/lib/systemd/netif/leases/*",
        ),
    ),
    "logfiles": ("remove the log files virt-sysprep removes", _globs(*LOGFILES)),
    "machine-id": ("empty /etc/machine-id, remove /var/lib/dbus/machine-id", _sysprep_machine_id),
    "net-hwaddr": ("drop HWADDR= from ifcfg-* files", _sysprep_net_hwaddr),
    "package-manager-cache": (
        "remove apt, dnf, yum, zypper and apk caches",
        _globs(
            "/var/cache/apt/archives/*",
            "/var/cache/dnf/*",
            "/var/cache/yum/*",
            "/var/cache/zypp*/*",
            "/var/cache/apk/*",
            "/var/cache/libdnf5/*",
        ),
    ),
    "ssh-hostkeys": ("remove /etc/ssh/*_host_* (regenerated at boot)", _globs("/etc/ssh/*_host_*")),
    "tmp-files": ("remove everything in /tmp and /var/tmp", _globs("/tmp/*", "/var/tmp/*")),
}


def _check_sysprep(value: str) -> None:
    if value not in SYSPREP:
        raise ValueError(f"unknown sysprep operation {value!r}; known: {', '.join(SYSPREP)}")


# --- the table --------------------------------------------------------------------------------

S, F, L, C = ArgKind.TEXT, ArgKind.FLAG, ArgKind.LIST, ArgKind.CSV
# fmt: off
_TABLE = (
    OperationSpec("size", S, "SIZE", "grow the disk to SIZE (20G) or by it (+2G), then its last "
        "partition, LVM volume and filesystem (before mounting)", None, check=_check_size),
    OperationSpec("network", F, "", "give the appliance a network connection (install implies "
        "it)", None, network=True),
    OperationSpec("install", C, "PKG,PKG..", "install packages with the guest's package manager "
        "(dnf, yum, apt, zypper, apk, pacman)", _apply_install, check=_check_package,
        network=True),
    OperationSpec("hostname", S, "HOSTNAME", "set /etc/hostname", _apply_hostname,
        check=_check_hostname),
    OperationSpec("timezone", S, "ZONE", "link /etc/localtime to /usr/share/zoneinfo/ZONE",
        _apply_timezone, check=_check_zone),
    OperationSpec("user", L, USER_FORM, "add a user, its own group and home (from /etc/skel), "
        "password locked", _each(_apply_user), check=_check_user),
    OperationSpec("delete", L, "PATH", "delete files or directories; globs allowed",
        _delete_globs, check=_guest_path),
    OperationSpec("mkdir", L, "DIR", "create a directory and its parents",
        _each(lambda ctx, path: ctx.g.mkdir_p(path)), check=_guest_path),
    OperationSpec("copy_in", L, "LOCALPATH:REMOTEDIR", "copy a local file or tree into an "
        "existing guest directory, owned by root", _each(_apply_copy_in),
        check=_check_local_remote("LOCALPATH:REMOTEDIR"), canon=_copy_in_canon),
    OperationSpec("upload", L, "FILE:DEST", "upload a local file, keeping its mode, owned by "
        "root", _each(_apply_upload), check=_check_local_remote("FILE:DEST"),
        canon=_upload_canon),
    OperationSpec("move", L, "SOURCE:DEST", "move a file or directory in the guest",
        _each(lambda ctx, v: ctx.g.mv(*v.split(":", 1))), check=_check_file_colon("SOURCE:DEST")),
    OperationSpec("write", L, "FILE:CONTENT", "write CONTENT to FILE", _each(_apply_write),
        check=_check_file_colon("FILE:CONTENT")),
    OperationSpec("append_line", L, "FILE:LINE", "append LINE and a newline to FILE",
        _each(_apply_append_line), check=_check_file_colon("FILE:LINE")),
    OperationSpec("link", L, "TARGET:LINK[:LINK..]", "create symbolic links to TARGET",
        _each(_apply_link), check=_check_link),
    OperationSpec("touch", L, "FILE", "touch FILE", _each(lambda ctx, path: ctx.g.touch(path)),
        check=_guest_path),
    OperationSpec("truncate", L, "FILE", "truncate an existing FILE to zero length",
        _each(lambda ctx, path: ctx.g.truncate(path)), check=_guest_path),
    OperationSpec("chmod", L, "PERMISSIONS:FILE", "change permissions (octal, e.g. 0755)",
        _each(_apply_chmod), check=_check_chmod),
    OperationSpec("run_command", L, "'CMD+ARGS'", "run a command with the guest's /bin/sh, "
        "chrooted into the guest; its output is returned", _each(_run_command),
        check=_check_run),
    OperationSpec("root_password", S, "SELECTOR", "set root's password: file:PATH, "
        "password:SECRET, random, disabled, locked:...", _apply_root_password,
        check=_selector, canon=_selector_canon, shown=_selector_shown),
    OperationSpec("password", L, "USER:SELECTOR", "set a user's password (selectors as for "
        "root_password)", _each(_apply_password), check=_check_password,
        canon=_password_canon, shown=_password_shown),
    OperationSpec("ssh_inject", L, "USER:file:PATH", "add public keys to "
        "~USER/.ssh/authorized_keys (or USER:string:KEY)", _each(_apply_ssh_inject),
        check=_ssh_parts, canon=_ssh_canon),
    OperationSpec("firstboot_command", L, "'CMD+ARGS'", "run a command once at the guest's "
        "first boot (systemd unit imagekit-firstboot.service)", _each(_firstboot),
        check=_check_run),
    OperationSpec("sysprep", C, "OP,OP..", "virt-sysprep clean-ups: " + ", ".join(SYSPREP),
        _each(lambda ctx, name: SYSPREP[name][1](ctx)), check=_check_sysprep),
    OperationSpec("selinux_relabel", F, "", "relabel SELinux files at next boot (touch "
        "/.autorelabel) unless SELinux is disabled", _apply_selinux_relabel),
)
# fmt: on
del S, F, L, C
OPERATIONS: Mapping[str, OperationSpec] = {spec.name: spec for spec in _TABLE}


# --- parsing and keys -------------------------------------------------------------------------


def _values(arg: str | bool | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(arg, bool):
        return ("true",) if arg else ()
    return (arg,) if isinstance(arg, str) else arg


def _coerce(spec: OperationSpec, raw: object, where: str) -> str | bool | tuple[str, ...]:
    if spec.kind is ArgKind.FLAG:
        if not isinstance(raw, bool):
            raise RecipeError(f"{where}: {spec.name} must be true or false")
        return raw
    if spec.kind is ArgKind.TEXT:
        if not isinstance(raw, str) or not raw:
            raise RecipeError(f"{where}: {spec.name} must be a non-empty string ({spec.metavar})")
        return raw
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise RecipeError(
            f"{where}: {spec.name} must be a string or a list of non-empty strings ({spec.metavar})"
        )
    if spec.kind is ArgKind.CSV:
        items = [part.strip() for item in items for part in item.split(",") if part.strip()]
    return tuple(items)


def parse_step(table: Mapping[str, object], *, where: str) -> Step:
    """Validate a ``[[customize]]`` table (or CLI flags) into a Step; errors say what is valid."""
    unknown = sorted(set(table) - set(OPERATIONS))
    if unknown:
        raise RecipeError(
            f"{where}: unknown customization {', '.join(unknown)}; valid: {', '.join(OPERATIONS)}"
        )
    operations = []
    for name, spec in OPERATIONS.items():
        if name not in table:
            continue
        arg = _coerce(spec, table[name], where)
        for value in _values(arg):
            try:
                spec.check(value)
            except ValueError as e:
                shown = f" = {value!r}" if spec.shown is _shown else ""  # never echo secrets
                raise RecipeError(f"{where}: {name}{shown}: {e}") from None
        if arg not in (False, ()):
            operations.append(Operation(name, arg))
    return Step(tuple(operations))


def canonical_step(step: Step, base_dir: Path) -> dict[str, object]:
    """The step as the build key sees it: secrets and local files replaced by their sha256."""
    operations: list[object] = []
    for op in step.operations:
        spec = OPERATIONS[op.name]
        arg: object = op.arg
        if spec.kind is ArgKind.TEXT:
            arg = spec.canon(str(op.arg), base_dir)
        elif spec.kind is not ArgKind.FLAG:
            arg = [spec.canon(value, base_dir) for value in _values(op.arg)]
        operations.append({"name": op.name, "version": spec.version, "arg": arg})
    return {"code_version": STEP_CODE_VERSION, "operations": operations}


def manifest_step(step: Step) -> dict[str, object]:
    """The step for the image manifest: as written, with secret values shown as "set"."""
    shown: dict[str, object] = {}
    for op in step.operations:
        spec = OPERATIONS[op.name]
        if isinstance(op.arg, bool):
            shown[op.name] = op.arg
        elif isinstance(op.arg, str):
            shown[op.name] = spec.shown(op.arg)
        else:
            shown[op.name] = [spec.shown(value) for value in op.arg]
    return shown


def needs_network(step: Step) -> bool:
    return any(OPERATIONS[op.name].network for op in step.operations)


def grow_size(step: Step, current_size: int | None = None) -> int | None:
    """The virtual size to resize the disk to before launch, or None if it need not grow.

    ``current_size`` (the parent's virtual size) is needed for a relative size like "+2G".
    """
    op = step.get("size")
    if op is None:
        return None
    relative, size = _parse_size(str(op.arg))
    if relative:
        if current_size is None:
            raise ValueError("grow_size needs the current size for a relative size")
        size += current_size
    target = -(-size // 512) * 512  # qemu-img wants whole sectors
    if current_size is None or target > current_size:
        return target
    if target < current_size:
        raise RecipeError(
            f"size = {op.arg!r} is smaller than the disk ({current_size} bytes); "
            "shrinking is not supported"
        )
    return None


def reference() -> str:
    """The operations table as Markdown; docs/customize.md embeds it and a test keeps them equal."""
    rows = ["| key | CLI flag | value | network | what it does |", "|---|---|---|---|---|"]
    for spec in OPERATIONS.values():
        value = spec.kind.value + (f" `{spec.metavar}`" if spec.metavar else "")
        network = "yes" if spec.network else ""
        rows.append(f"| `{spec.name}` | `{spec.flag}` | {value} | {network} | {spec.help} |")
    rows += ["", "| sysprep operation | what it does |", "|---|---|"]
    rows += [f"| `{name}` | {help_} |" for name, (help_, _) in SYSPREP.items()]
    return "\n".join(rows).replace("*", "\\*") + "\n"  # globs are not emphasis


# --- applying ---------------------------------------------------------------------------------


def apply_step(
    g: Any, step: Step, *, base_dir: Path, progress: ProgressCallback = ignore_progress
) -> StepResult:
    """Apply ``step`` to the mounted guest (see ``appliance.mount_inspected``); size excepted."""
    ctx = _Context(g, base_dir, StepResult())
    for op in step.operations:
        spec = OPERATIONS[op.name]
        if spec.apply is None:
            continue
        progress(ProgressEvent("customize", f"{op.name} {_brief(spec, op)}"))
        try:
            spec.apply(ctx, _values(op.arg))
        except RuntimeError as e:
            raise CustomizeError(f"{op.name} {_brief(spec, op)}: {e}") from e
    return ctx.result


def _brief(spec: OperationSpec, op: Operation) -> str:
    text = " ".join(spec.shown(v) for v in _values(op.arg)) if not isinstance(op.arg, bool) else ""
    return text if len(text) <= 80 else text[:77] + "..."

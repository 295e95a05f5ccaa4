"""ssh_inject: public keys into ~USER/.ssh/authorized_keys, owned by the user."""

from __future__ import annotations

from pathlib import Path

from imagekit.core.digest import sha256_bytes
from imagekit.customize.context import Context, local_path
from imagekit.customize.spec import USERNAME, ArgKind, OperationSpec, each, split_fields
from imagekit.errors import RecipeError

SSH_FORM = "USER:file:PATH or USER:string:KEY"


def _ssh_parts(value: str) -> tuple[str, str, str]:
    user, kind, key = split_fields(value, 3, SSH_FORM)
    if kind not in ("file", "string") or not USERNAME.fullmatch(user):
        raise ValueError(f"expected {SSH_FORM}")
    return user, kind, key


def _ssh_keys(value: str, base_dir: Path) -> tuple[str, list[str]]:
    user, kind, key = _ssh_parts(value)
    if kind == "file":
        path = local_path(key, base_dir)
        try:
            key = path.read_text()
        except OSError as e:
            raise RecipeError(f"ssh_inject: cannot read the key file {path}: {e.strerror}") from e
    keys = [line.strip() for line in key.splitlines() if line.strip()]
    if not keys:
        raise RecipeError(f"ssh_inject for {user}: the key is empty")
    return user, keys


def _ssh_canon(value: str, base_dir: Path) -> object:
    """The keys' sha256, so a key file and the same key written out give the same build key."""
    user, keys = _ssh_keys(value, base_dir)
    return f"{user}:{sha256_bytes(chr(10).join(keys).encode())}"


def _apply_ssh_inject(ctx: Context, value: str) -> None:
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


# fmt: off
OPERATIONS = (
    OperationSpec("ssh_inject", ArgKind.LIST, "USER:file:PATH", "add public keys to "
        "~USER/.ssh/authorized_keys (or USER:string:KEY)", each(_apply_ssh_inject),
        check=_ssh_parts, canon=_ssh_canon),
)
# fmt: on

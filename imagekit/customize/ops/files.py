"""Guest files: delete, mkdir, copy_in, upload, move, write, append_line, link, touch, chmod…

Local inputs (upload, copy_in) count in the build key by their content and mode, so editing
one rebuilds the layer; they land owned by root, since a host uid means nothing in the guest.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from imagekit.core.digest import hash_file, tree_digest
from imagekit.customize.context import Context, local_path
from imagekit.customize.spec import ArgKind, OperationSpec, check_guest_path, each, split_fields
from imagekit.errors import CustomizeError, RecipeError
from imagekit.guest.tarball import pack


def _check_file_colon(form: str) -> Callable[[str], None]:
    """For FILE:REST values whose first part is a guest path."""

    def check(value: str) -> None:
        if ":" not in value:
            raise ValueError(f"expected {form}")
        check_guest_path(value.split(":", 1)[0])

    return check


def _check_local_remote(form: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        check_guest_path(split_fields(value, 2, form)[1])

    return check


def _check_chmod(value: str) -> None:
    mode, path = split_fields(value, 2, "PERMISSIONS:FILE, e.g. 0755:/usr/local/bin/tool")
    if not re.fullmatch(r"[0-7]{1,4}", mode):
        raise ValueError(f"permissions {mode!r} must be octal, e.g. 0644")
    check_guest_path(path)


def _check_link(value: str) -> None:
    target, *links = value.split(":")
    if not target or not links:
        raise ValueError("expected TARGET:LINK[:LINK...]")
    for link in links:
        check_guest_path(link)


def _existing(path: Path, op: str, *, tree: bool = False) -> Path:
    """A local input read whole: a regular file, or for copy_in (``tree``) a directory or link."""
    try:
        mode = path.stat().st_mode  # follows links: a dangling one does not exist
    except OSError:
        raise RecipeError(f"{op}: the local path {path} does not exist") from None
    if stat.S_ISREG(mode) or (tree and (stat.S_ISDIR(mode) or path.is_symlink())):
        return path
    if stat.S_ISDIR(mode):
        raise RecipeError(f"{op}: the local path {path} is a directory; copy_in takes a tree")
    raise RecipeError(f"{op}: the local path {path} is not a regular file (a device or pipe)")


def _mode(path: Path) -> str:
    return f"{path.stat().st_mode & 0o7777:04o}"


def _upload_canon(value: str, base_dir: Path) -> object:
    local, dest = value.split(":", 1)
    path = _existing(local_path(local, base_dir), "upload")
    return {
        "sha256": hash_file(path)["sha256"],
        "name": path.name,
        "mode": _mode(path),
        "dest": dest,
    }


def _copy_in_canon(value: str, base_dir: Path) -> object:
    """What lands in DEST: an entry named after the local path, a link, or a file/tree and mode."""
    local, dest = value.split(":", 1)
    path = _existing(local_path(local, base_dir), "copy_in", tree=True)
    if path.is_symlink():  # tar keeps it a link
        return {"name": path.name, "link": os.readlink(path), "dest": dest}
    return {"name": path.name, "tree": tree_digest(path), "mode": _mode(path), "dest": dest}


def _apply_upload(ctx: Context, value: str) -> None:
    g = ctx.g
    local, dest = value.split(":", 1)
    path = _existing(ctx.local(local), "upload")
    if g.is_dir(dest):
        dest = dest.rstrip("/") + "/" + path.name
    g.upload(str(path), dest)
    g.lchown(0, 0, dest)
    g.chmod(path.stat().st_mode & 0o7777, dest)


def _apply_copy_in(ctx: Context, value: str) -> None:
    local, dest = value.split(":", 1)
    path = _existing(ctx.local(local), "copy_in", tree=True)
    if not ctx.g.is_dir(dest):
        raise CustomizeError(f"copy_in: the guest has no directory {dest}; create it with mkdir")
    with tempfile.TemporaryDirectory(prefix="imagekit-copy-in-") as tmp:
        tarball = Path(tmp) / "copy.tar"
        pack([(path, path.name)], tarball, owner=(0, 0))
        ctx.g.tar_in(str(tarball), dest)


def _apply_write(ctx: Context, value: str) -> None:
    path, content = value.split(":", 1)
    ctx.write(path, content)


def _apply_append_line(ctx: Context, value: str) -> None:
    """As virt-customize: end the file's last line first, reuse its line ending (LF or CRLF)."""
    path, line = value.split(":", 1)
    text = ctx.read(path) if ctx.g.exists(path) else ""
    newline = "\r\n" if "\r\n" in text else "\n"
    if text and not text.endswith("\n"):
        text += newline
    ctx.write(path, text + line + newline)


def _apply_link(ctx: Context, value: str) -> None:
    target, *links = value.split(":")
    for link in links:
        ctx.g.ln_sf(target, link)


def _apply_chmod(ctx: Context, value: str) -> None:
    mode, path = value.split(":", 1)
    ctx.g.chmod(int(mode, 8), path)


_LIST = ArgKind.LIST
# fmt: off
OPERATIONS = (
    OperationSpec("delete", _LIST, "PATH", "delete files or directories; globs allowed",
        Context.delete_globs, check=check_guest_path),
    OperationSpec("mkdir", _LIST, "DIR", "create a directory and its parents",
        each(lambda ctx, path: ctx.g.mkdir_p(path)), check=check_guest_path),
    OperationSpec("copy_in", _LIST, "LOCALPATH:REMOTEDIR", "copy a local file or tree into an "
        "existing guest directory, owned by root", each(_apply_copy_in),
        check=_check_local_remote("LOCALPATH:REMOTEDIR"), canon=_copy_in_canon, version=2),
    OperationSpec("upload", _LIST, "FILE:DEST", "upload a local file, keeping its mode, owned by "
        "root", each(_apply_upload), check=_check_local_remote("FILE:DEST"),
        canon=_upload_canon),
    OperationSpec("move", _LIST, "SOURCE:DEST", "move a file or directory in the guest",
        each(lambda ctx, v: ctx.g.mv(*v.split(":", 1))), check=_check_file_colon("SOURCE:DEST")),
    OperationSpec("write", _LIST, "FILE:CONTENT", "write CONTENT to FILE", each(_apply_write),
        check=_check_file_colon("FILE:CONTENT")),
    OperationSpec("append_line", _LIST, "FILE:LINE", "append LINE and a newline to FILE",
        each(_apply_append_line), check=_check_file_colon("FILE:LINE")),
    OperationSpec("link", _LIST, "TARGET:LINK[:LINK..]", "create symbolic links to TARGET",
        each(_apply_link), check=_check_link),
    OperationSpec("touch", _LIST, "FILE", "touch FILE", each(lambda ctx, path: ctx.g.touch(path)),
        check=check_guest_path),
    OperationSpec("truncate", _LIST, "FILE", "truncate an existing FILE to zero length",
        each(lambda ctx, path: ctx.g.truncate(path)), check=check_guest_path),
    OperationSpec("chmod", _LIST, "PERMISSIONS:FILE", "change permissions (octal, e.g. 0755)",
        each(_apply_chmod), check=_check_chmod),
)
# fmt: on

"""Who may read the store: its owner alone, or its owner and one group of readers.

As containers-storage does for podman (its storage root is 0700), the store's root directory is
the gate: only its owner (and the store's group, when there is one) can enter it, so nothing
inside is reachable by anyone else whatever mode a tool left it with. Inside, what imagekit
writes is owner-only too: directories 0700, blobs 0400, other files 0600. With a group
(``group = "imagekit"`` in config.toml) directories are 02750 (setgid: whatever is made in them
belongs to the group), blobs 0440 and files 0640, owned by that group, so its members can read
the store (skopeo, oras, qemu through ``export --link``) and only the owner writes it.

An existing store's modes are never changed behind its owner's back (a wider mode may be on
purpose, for a VM's qemu user): ``imagekit fsck`` reports what others can read, with the chmod.
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import StoreError

# (who, read bit, search bit) for the classes of users a store may be exposed to.
_GROUP = ("group", stat.S_IRGRP, stat.S_IXGRP)
_OTHER = ("other users", stat.S_IROTH, stat.S_IXOTH)
_EXAMPLES = 3


@dataclass(frozen=True)
class Access:
    """The store's permission model: owner-only (``gid`` None) or owner + group ``gid``."""

    group: str | None = None
    gid: int | None = None

    @classmethod
    def of(cls, group: str | None) -> Access:
        """The model for ``group`` (None: owner-only); the group must exist and be ours."""
        if group is None:
            return cls()
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise StoreError(
                f"group {group!r} does not exist: create it (groupadd {group}) or remove "
                "`group` from config.toml"
            ) from None
        if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
            raise StoreError(
                f"you are not a member of group {group!r}, so the store cannot be given to it: "
                f"join it (usermod -aG {group} $USER, then log in again) or remove `group` "
                "from config.toml"
            )
        return cls(group, gid)

    @property
    def dir_mode(self) -> int:
        return 0o700 if self.gid is None else 0o2750

    @property
    def blob_mode(self) -> int:
        return 0o400 if self.gid is None else 0o440

    @property
    def file_mode(self) -> int:
        return 0o600 if self.gid is None else 0o640

    def make_dir(self, path: Path, *, claim_empty: bool = False) -> None:
        """Create ``path`` with the store's mode and group; one that exists is left as it is,
        unless ``claim_empty`` and it is an empty directory (a new store's root)."""
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            if not (claim_empty and path.is_dir() and not any(path.iterdir())):
                return
        self._own(path, self.dir_mode)

    def seal(self, fd: int) -> None:
        """Give a new blob the store's group and its read-only mode."""
        if self.gid is not None:
            os.fchown(fd, -1, self.gid)
        os.fchmod(fd, self.blob_mode)

    def narrow(self, blob: Path, source: os.stat_result) -> None:
        """Take from ``blob`` any read right the file it was copied from did not give.

        Group readers keep it only if the source was readable by everyone, or by the store's
        own group: an import must not widen who can read a file.
        """
        keep = stat.S_IRUSR
        if source.st_mode & stat.S_IROTH:
            keep |= stat.S_IRGRP | stat.S_IROTH
        elif source.st_mode & stat.S_IRGRP and source.st_gid == self.gid:
            keep |= stat.S_IRGRP
        mode = stat.S_IMODE(blob.stat().st_mode)
        if mode & ~keep:
            os.chmod(blob, mode & keep)

    def problems(self, root: Path) -> list[str]:
        """What fsck says of entries readable by users the model does not allow (and of a
        group store its group cannot enter), each with the command that fixes it."""
        classes = [_OTHER] if self.gid is not None else [_GROUP, _OTHER]
        fix = "go-rwx" if self.gid is None else "o-rwx"
        model = "owner-only" if self.gid is None else f"for its owner and group {self.group}"
        found = self._unreachable(root)
        for who, read, search in classes:
            # Files first: a readable blob says more than the folder it is in.
            paths = [str(p) for p in sorted(_readable(root, read, search), key=Path.is_dir)]
            if paths:
                more = ", ..." if len(paths) > _EXAMPLES else ""
                examples = ", ".join(paths[:_EXAMPLES]) + more
                found.append(
                    f"{len(paths)} entries of the store can be read by {who} ({examples}); the "
                    f"store is {model}: run `chmod -R {fix} {root}`"
                )
        return found

    def _unreachable(self, root: Path) -> list[str]:
        """A store given to a group after it was made: its root keeps the group out."""
        st = root.stat()
        if self.gid is None or (st.st_gid == self.gid and st.st_mode & stat.S_IXGRP):
            return []
        return [
            f"group {self.group} cannot enter the store (its root is group {st.st_gid}, mode "
            f"{stat.S_IMODE(st.st_mode):o}): run `chgrp -R {self.group} {root} && chmod -R "
            f"g+rX,g-w {root} && find {root} -type d -exec chmod g+s {{}} +`"
        ]

    def _own(self, path: Path, mode: int) -> None:
        if self.gid is not None:
            os.chown(path, -1, self.gid)
        os.chmod(path, mode)


def _readable(root: Path, read: int, search: int) -> Iterator[Path]:
    """Entries under ``root`` (itself included) with ``read`` set that a user of that class can
    reach: every directory on the way grants ``search``. Symlinks have no mode of their own."""
    work = [root]
    while work:
        path = work.pop()
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue  # gone meanwhile (a temp, a lock)
        if stat.S_ISLNK(st.st_mode):
            continue
        if st.st_mode & read:
            yield path
        if stat.S_ISDIR(st.st_mode) and st.st_mode & search:
            try:
                work.extend(sorted(path.iterdir(), reverse=True))
            except FileNotFoundError:
                continue

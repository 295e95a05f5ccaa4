"""The one place imagekit talks to libvirt (libvirt-python, Debian's python3-libvirt).

The module is imported only when a command needs libvirt, so imagekit runs without it.
Every libvirt failure becomes an ImagekitError naming what was being done; libvirt's own
habit of printing each error to stderr is switched off, so the CLI prints one line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from imagekit.errors import ImagekitError, RecipeError

T = TypeVar("T")
_LOCAL_SCHEMES = ("qemu", "qemu+unix")
# virDomainState, as virsh words it
_STATES = ("no state", "running", "blocked", "paused", "shutting down", "shut off", "crashed")
_ERR_NO_DOMAIN = 42  # VIR_ERR_NO_DOMAIN
_ERR_NO_DOMAIN_METADATA = 80  # VIR_ERR_NO_DOMAIN_METADATA
_METADATA_ELEMENT = 2  # VIR_DOMAIN_METADATA_ELEMENT
_UNDEFINE = 1 | 2 | 4  # managed save, snapshot metadata, NVRAM
_MESSAGE_MAX = 400
# qemu quotes the whole option it failed on: -blockdev {"driver":"file",...}: Could not open ...
_QEMU_OPTION = re.compile(r"-(?:blockdev|drive|device|chardev) \{[^{}]*\}: ")


def is_system(uri: str) -> bool:
    """Whether ``uri`` names the system instance (qemu runs as libvirt's qemu user) rather
    than a session (qemu runs as the caller)."""
    return urlsplit(uri).path.rstrip("/") == "/system"


def check_local(uri: str) -> str:
    """``uri`` if it names a qemu driver on this host: the VM's disk is made here."""
    parts = urlsplit(uri)
    path = parts.path.rstrip("/")
    if parts.scheme not in _LOCAL_SCHEMES or parts.netloc or path not in ("/system", "/session"):
        raise RecipeError(
            f"--connect {uri!r}: imagekit's VMs have their disks and roots on this host, so "
            "give a local qemu URI (qemu:///system, qemu:///session, qemu+unix:///system?...)"
        )
    return uri


@dataclass
class Domain:
    """One libvirt domain, typed."""

    handle: Any

    @property
    def name(self) -> str:
        return str(self.handle.name())

    def state(self) -> str:
        code = int(_call(f"reading the state of {self.name}", self.handle.state)[0])
        return _STATES[code] if 0 <= code < len(_STATES) else "suspended"

    def active(self) -> bool:
        return bool(_call(f"reading the state of {self.name}", self.handle.isActive))

    def xml(self) -> str:
        return str(_call(f"reading the XML of {self.name}", self.handle.XMLDesc, 0))

    def metadata(self, namespace: str) -> str | None:
        """Our element of the domain's ``<metadata>``, or None when it has none."""
        import libvirt

        try:
            return str(self.handle.metadata(_METADATA_ELEMENT, namespace, 0))
        except libvirt.libvirtError as e:
            if e.get_error_code() == _ERR_NO_DOMAIN_METADATA:
                return None
            raise _error(f"reading the metadata of {self.name}", e) from None

    def start(self) -> None:
        _call(f"starting {self.name}", self.handle.create)

    def destroy(self) -> None:
        _call(f"stopping {self.name}", self.handle.destroy)

    def undefine(self) -> None:
        _call(f"undefining {self.name}", self.handle.undefineFlags, _UNDEFINE)


@dataclass
class Hypervisor:
    """An open connection: what it is (``uri``, ``system``) and the domains behind it."""

    handle: Any

    @property
    def uri(self) -> str:
        return str(_call("reading the connection's URI", self.handle.getURI))

    @property
    def system(self) -> bool:
        return is_system(self.uri)

    def lookup(self, name: str) -> Domain | None:
        import libvirt

        try:
            return Domain(self.handle.lookupByName(name))
        except libvirt.libvirtError as e:
            if e.get_error_code() == _ERR_NO_DOMAIN:
                return None
            raise _error(f"looking up domain {name}", e) from None

    def define(self, xml: str) -> Domain:
        return Domain(_call("defining the domain", self.handle.defineXML, xml))

    def domains(self) -> list[Domain]:
        handles = _call("listing domains", self.handle.listAllDomains, 0)
        return sorted((Domain(h) for h in handles), key=lambda d: d.name)


@contextmanager
def connect(uri: str | None) -> Iterator[Hypervisor]:
    """A read-write connection to ``uri`` (None: libvirt's default), closed afterwards."""
    try:
        import libvirt
    except ImportError:
        raise ImagekitError(
            "libvirt-python is not installed; install python3-libvirt (Debian, Ubuntu, "
            "Fedora) or pip install libvirt-python"
        ) from None
    libvirt.registerErrorHandler(_quiet, None)
    try:
        handle = libvirt.open(uri)
    except libvirt.libvirtError as e:
        where = uri or "libvirt's default URI"
        raise ImagekitError(
            f"cannot connect to {where}: {message(e)}; start libvirtd (systemctl start "
            "libvirtd) or pass --connect URI"
        ) from None
    try:
        yield Hypervisor(handle)
    finally:
        handle.close()


@contextmanager
def connect_local(uri: str | None) -> Iterator[Hypervisor]:
    """A connection to this host's qemu driver: the VMs' files and roots are here."""
    if uri is not None:
        check_local(uri)  # before connecting: never reach out to another host
    with connect(uri) as hypervisor:
        check_local(hypervisor.uri)
        yield hypervisor


def message(error: BaseException) -> str:
    """A libvirt error's text on one line, without the qemu option it quotes, capped."""
    text = _QEMU_OPTION.sub("", " ".join(str(error).split()))
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."


def _call(what: str, function: Callable[..., T], *args: object) -> T:
    import libvirt

    try:
        return function(*args)
    except libvirt.libvirtError as e:
        raise _error(what, e) from None


def _error(what: str, error: BaseException) -> ImagekitError:
    return ImagekitError(f"libvirt failed {what}: {message(error)}")


def _quiet(_context: object, _error: object) -> None:
    """libvirt's error handler: errors arrive as exceptions, not as stderr lines."""

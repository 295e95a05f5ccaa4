"""Steps without a guest: parse a ``[[customize]]`` table, its build key, manifest and docs.

Names and meanings follow virt-customize(1) and virt-sysprep(1). A step's operations run in the
table's order (customize.table), not the order they were written, so its canonical form is a
stable build key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from imagekit.core.digest import canonical_json, keyed_digest
from imagekit.customize.ops.launch import parse_size
from imagekit.customize.ops.sysprep import SYSPREP
from imagekit.customize.spec import ArgKind, Operation, OperationSpec
from imagekit.customize.table import OPERATIONS
from imagekit.errors import RecipeError
from imagekit.guest.appliance import InspectedOS

STEP_CODE_VERSION = "1"
"""Part of every build key: bump it when the behaviour of apply_step changes for all operations
(bump an operation's own ``version`` when only that one changes)."""


@dataclass(frozen=True)
class Step:
    """Operations in the table's application order."""

    operations: tuple[Operation, ...]

    def get(self, name: str) -> Operation | None:
        return next((op for op in self.operations if op.name == name), None)


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
        op = Operation(name, _coerce(spec, table[name], where))
        for value in op.values:
            try:
                spec.check(value)
            except ValueError as e:
                shown = "" if spec.hides_values else f" = {value!r}"  # never echo secrets
                raise RecipeError(f"{where}: {name}{shown}: {e}") from None
        if op.arg not in (False, ()):
            operations.append(op)
    return Step(tuple(operations))


def canonical_step(step: Step, base_dir: Path, digest_key: bytes) -> dict[str, object]:
    """The step as the build key sees it: local files replaced by their sha256, secrets by a
    digest keyed with the store's ``digest_key`` (build keys are recorded, and a plain hash of
    a password in them would be a dictionary lookup for it)."""
    operations: list[object] = []
    for op in step.operations:
        spec = OPERATIONS[op.name]
        arg: object = op.arg
        if spec.kind is ArgKind.TEXT:
            arg = _canon(spec, str(op.arg), base_dir, digest_key)
        elif spec.kind is not ArgKind.FLAG:
            arg = [_canon(spec, value, base_dir, digest_key) for value in op.values]
        operations.append({"name": op.name, "version": spec.version, "arg": arg})
    return {"code_version": STEP_CODE_VERSION, "operations": operations}


def _canon(spec: OperationSpec, value: str, base_dir: Path, digest_key: bytes) -> object:
    canon = spec.canon(value, base_dir)
    return keyed_digest(digest_key, canonical_json(canon)) if spec.hides_values else canon


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


# What libguestfs inspection reads (inspect-fs-unix.c): release and version files, fstab, the
# hostname files, the binaries it takes the architecture from, the package managers in /usr.
# A step that runs guest programs or copies trees may change any of it: it is inspected again.
_REINSPECT_OPERATIONS = frozenset({"install", "run_command", "copy_in", "move", "sysprep"})
_PATH_OPERATIONS = frozenset(
    {"delete", "mkdir", "upload", "write", "append_line", "link", "touch", "truncate", "chmod"}
)
_INSPECTED_NAMES = (
    *("release", "version", "fstab", "hostname", "HOSTNAME", "sysconfig", "bin", "/lib", "/usr"),
    *("*", "?", "["),  # a glob may name any of them
)


def inspected_after(step: Step, before: InspectedOS) -> InspectedOS | None:
    """What inspection would say after ``step`` on a guest ``before`` describes, or None if
    the step may have changed what inspection reads (then the caller inspects again).

    Only the hostname is derived: a step that names no inspected file (or a folder above one)
    and runs no guest program leaves the rest as it was.
    """
    for op in step.operations:
        if op.name in _REINSPECT_OPERATIONS:
            return None
        if op.name in _PATH_OPERATIONS:
            parts = [part for value in op.values for part in value.split(":")]
            if any(p.rstrip("/") in ("", "/etc") or _names_inspected(p) for p in parts):
                return None
    hostname = step.get("hostname")
    return before.with_hostname(str(hostname.arg)) if hostname is not None else before


def _names_inspected(part: str) -> bool:
    return any(name in part for name in _INSPECTED_NAMES)


def grow_size(step: Step, current_size: int | None = None) -> int | None:
    """The virtual size to resize the disk to before launch, or None if it need not grow.

    ``current_size`` (the parent's virtual size) is needed for a relative size like "+2G".
    """
    op = step.get("size")
    if op is None:
        return None
    relative, size = parse_size(str(op.arg))
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

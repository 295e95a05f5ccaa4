"""Build: a base image, then one qcow2 overlay layer per customization step, cached by inputs.

A layer's build key is sha256(parent disk digest + canonical step + the code version that applies
it). A key already built resolves to its layer without launching anything, so an unchanged
rebuild costs no appliance launch, and a changed last step reruns only that step. Each overlay
names its parent by the parent blob's file name, so no byte of the base is copied and the chain
stays valid wherever the store lives.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from imagekit import customize, guest, kickstart, qemu_img, scratch
from imagekit.errors import CustomizeError, ImagekitError, RecipeError
from imagekit.image import Image
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress
from imagekit.pull import (
    CREATED_ANNOTATION,
    RECIPE_DIGEST_ANNOTATION,
    base_config,
    fetch_image,
    source_identity,
)
from imagekit.recipe import HttpSource, KickstartSource, Recipe, RecipeSource, ScratchSource
from imagekit.refs import parse_ref
from imagekit.store import (
    MEDIA_DISK_QCOW2,
    MEDIA_DISK_RAW,
    PARENT_ANNOTATION,
    Descriptor,
    Store,
    canonical_json,
)
from imagekit.verify import UNVERIFIED, hash_file

SCRATCH_CODE_VERSION = "1"
_DISK_MEDIA = {MEDIA_DISK_QCOW2, MEDIA_DISK_RAW}


@dataclass(frozen=True)
class LayerReport:
    """What one layer of a build cost: ``cached`` layers made no launch."""

    name: str
    digest: str
    cached: bool
    seconds: float


@dataclass(frozen=True)
class BuildResult:
    image: Image
    layers: list[LayerReport] = field(default_factory=list)
    generated_passwords: dict[str, str] = field(default_factory=dict)


class BuildCache:
    """Build key -> manifest or layer digest, one small file per key under ``cache/build``.

    Plain files written by rename survive kill -9 and concurrent builders (last writer wins with
    an identical value). An entry whose blob gc removed is simply a miss.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.directory = store.cache_dir / "build"

    def get(self, key: str) -> Descriptor | None:
        try:
            record = json.loads((self.directory / key).read_text())
            descriptor = Descriptor.from_json(record)
        except (OSError, ValueError, ImagekitError):
            return None
        return descriptor if self.store.has_blob(descriptor.digest) else None

    def put(self, key: str, descriptor: Descriptor) -> None:
        self.write(key, descriptor.to_json())

    def write(self, name: str, obj: Any) -> None:
        """Replace ``name`` by rename, so a reader or a kill never sees half an entry."""
        self.directory.mkdir(parents=True, exist_ok=True)
        temp = self.directory / f".{name}.{os.getpid()}"
        temp.write_bytes(canonical_json(obj))
        os.replace(temp, self.directory / name)


def build(
    store: Store,
    recipe: Recipe,
    *,
    tag: str | None = None,
    mirror: str | None = None,
    use_cache: bool = True,
    progress: ProgressCallback = ignore_progress,
) -> BuildResult:
    """Build ``recipe`` (pulling or building its base as needed) and tag it."""
    ref = str(parse_ref(tag)) if tag else recipe.ref
    cache = BuildCache(store)
    with store.shared_lock():
        base, reports = _base(store, recipe, cache, mirror, use_cache, progress)
        steps = [
            customize.parse_step(table, where=f"{recipe.path or recipe.name} customize[{i}]")
            for i, table in enumerate(recipe.customize)
        ]
        base_dir = recipe.path.parent if recipe.path else Path.cwd()
        layers, step_records, passwords = _apply_steps(
            store, base, steps, base_dir, cache, use_cache, reports, progress
        )
        return BuildResult(
            _tag_build(store, ref, recipe, base, layers, step_records), reports, passwords
        )


def customize_image(
    store: Store,
    ref: str,
    table: Mapping[str, Any],
    *,
    tag: str | None = None,
    base_dir: Path | None = None,
    use_cache: bool = True,
    progress: ProgressCallback = ignore_progress,
) -> BuildResult:
    """Apply one ad-hoc step to a stored image; the result is a new layer and a new ref."""
    step = customize.parse_step(table, where="customize")
    cache = BuildCache(store)
    with store.shared_lock():
        base = Image.load(store, ref)
        new_ref = str(parse_ref(tag)) if tag else f"{base.ref or 'image'}-custom"
        reports: list[LayerReport] = []
        layers, records, passwords = _apply_steps(
            store, base, [step], base_dir or Path.cwd(), cache, use_cache, reports, progress
        )
        identity = (
            "sha256:"
            + hashlib.sha256(
                canonical_json({"customize": base.digest, "layers": [d.digest for d in layers]})
            ).hexdigest()
        )
        config = {
            **base_config(parse_ref(new_ref).name, parse_ref(new_ref).tag, base.config.get("arch")),
            "base": {"ref": base.ref, "digest": base.digest},
            "verification": base.config.get("verification"),
            "steps": [*base.config.get("steps", []), *records],
            "inspection": records[-1].get("inspection") or base.config.get("inspection"),
        }
        image = _write(store, new_ref, identity, config, base, layers)
        return BuildResult(image, reports, passwords)


def _base(
    store: Store,
    recipe: Recipe,
    cache: BuildCache,
    mirror: str | None,
    use_cache: bool,
    progress: ProgressCallback,
) -> tuple[Image, list[LayerReport]]:
    """The image the steps start from, with a report line for it."""
    source = recipe.source
    started = time.monotonic()
    if isinstance(source, RecipeSource):
        parent = source.load()
        result = build(store, parent, mirror=mirror, use_cache=use_cache, progress=progress)
        return result.image, result.layers
    if isinstance(source, HttpSource):
        # Keyed by the source alone: editing a step must not re-verify or re-fetch the base.
        source_only = replace(
            recipe,
            customize=(),
            text=json.dumps(asdict(source), default=str, sort_keys=True),
        )
        key = _key(
            {
                "http": source_identity(store, source_only, mirror=mirror),
                "keys": [hash_file(k)["sha256"] for k in source.keys],
            }
        )
        hit = cache.get(key) if use_cache else None
        if hit is not None:
            image = Image.from_descriptor(store, hit, cached=True)
        else:
            image = fetch_image(store, recipe, mirror=mirror, progress=progress)
            cache.put(key, Descriptor(image.manifest["mediaType"], image.digest, 0))
        report = LayerReport(
            f"fetch {source.filename}", image.disk_digest, hit is not None, _since(started)
        )
        return image, [report]
    if isinstance(source, KickstartSource):
        image, cached = _make_kickstart(store, recipe, source, cache, mirror, use_cache, progress)
        name = f"kickstart install from {source.installer_recipe or source.kickstart.name}"
        return image, [LayerReport(name, image.disk_digest, cached, _since(started))]
    key = _key({"scratch": _scratch_identity(source), "code": SCRATCH_CODE_VERSION})
    # Scratch disks are not bit-identical (ext4 UUIDs, timestamps): the key lock makes a
    # concurrent identical build wait for the first one's disk and reuse it.
    with store.digest_lock(f"build-{key}"):
        hit = cache.get(key) if use_cache else None
        if hit is not None:
            image = Image.from_descriptor(store, hit, cached=True)
        else:
            image = _make_scratch(store, recipe, source, progress)
            cache.put(key, Descriptor(image.manifest["mediaType"], image.digest, 0))
    name = f"scratch {source.filesystem} from {source.content.name}"
    return image, [LayerReport(name, image.disk_digest, hit is not None, _since(started))]


def _make_scratch(
    store: Store, recipe: Recipe, source: ScratchSource, progress: ProgressCallback
) -> Image:
    spec = scratch.ScratchSpec(
        size=source.size,
        partition_table=source.partition_table,
        filesystem=source.filesystem,
        label=source.label,
        content=source.content,
        format=source.format,
    )
    temp = store.new_temp("." + source.format)
    try:
        scratch.make_scratch_disk(spec, temp, progress=progress)
        digest = "sha256:" + hash_file(temp)["sha256"]
        media = MEDIA_DISK_QCOW2 if source.format == "qcow2" else MEDIA_DISK_RAW
        disk = store.commit_file(temp, digest, media)
    finally:
        temp.unlink(missing_ok=True)
    config = {
        **base_config(recipe.name, recipe.version, recipe.arch),
        "source": {"kind": "scratch", **_scratch_identity(source)},
        "verification": {"level": UNVERIFIED, "signer": None},
        "disk": {"digest": disk.digest, "size": disk.size, "format": source.format},
    }
    manifest = store.write_manifest(config, [disk], {CREATED_ANNOTATION: config["created"]})
    return Image.from_descriptor(store, manifest)


def _make_kickstart(
    store: Store,
    recipe: Recipe,
    source: KickstartSource,
    cache: BuildCache,
    mirror: str | None,
    use_cache: bool,
    progress: ProgressCallback,
) -> tuple[Image, bool]:
    """Validate and fetch first (cheap), then install only if this build key was never built.

    The key lock makes a concurrent identical build wait for the first one and reuse it.
    """
    prepared = kickstart.prepare(store, recipe, source, mirror=mirror, progress=progress)
    with store.digest_lock(f"kickstart-{prepared.key}"):
        hit = cache.get(prepared.key) if use_cache else None
        if hit is not None:
            return Image.from_descriptor(store, hit, cached=True), True
        image = kickstart.install(store, recipe, prepared, progress)
        cache.put(prepared.key, Descriptor(image.manifest["mediaType"], image.digest, 0))
        return image, False


def _apply_steps(
    store: Store,
    base: Image,
    steps: Sequence[customize.Step],
    base_dir: Path,
    cache: BuildCache,
    use_cache: bool,
    reports: list[LayerReport],
    progress: ProgressCallback,
) -> tuple[list[Descriptor], list[dict[str, Any]], dict[str, str]]:
    """Layer each step on the previous one; return new layers, their records, passwords made."""
    parent = base.disk
    layers: list[Descriptor] = []
    records: list[dict[str, Any]] = []
    passwords: dict[str, str] = {}
    for number, step in enumerate(steps, 1):
        started = time.monotonic()
        canonical = customize.canonical_step(step, base_dir)
        key = _key(
            {"parent": parent.digest, "step": canonical, "code": customize.STEP_CODE_VERSION}
        )
        record: dict[str, Any] = {"key": key, "step": customize.manifest_step(step)}
        # Layers are not bit-identical either: a concurrent builder of the same key waits here,
        # then finds the first one's layer in the cache (one layer per step, both refs).
        with store.digest_lock(f"build-{key}"):
            hit = cache.get(key) if use_cache else None
            if hit is not None:
                layer = hit
                record.update(_cached_record(cache, key))
            else:
                progress(ProgressEvent("customize", f"step {number}/{len(steps)}"))
                layer, outcome = _run_step(store, [*base.disks, *layers], step, base_dir, progress)
                passwords.update(outcome.pop("generated_passwords"))
                record.update(outcome)
                # Record first: the cache entry is what makes the key a hit, so a kill between
                # the two must not leave a hit whose inspection and messages are lost.
                _save_record(cache, key, outcome)
                cache.put(key, layer)
        layers.append(layer)
        record["digest"] = layer.digest
        records.append(record)
        reports.append(
            LayerReport(f"step {number}", layer.digest, hit is not None, _since(started))
        )
        parent = layer
    return layers, records, passwords


def _run_step(
    store: Store,
    chain: Sequence[Descriptor],
    step: customize.Step,
    base_dir: Path,
    progress: ProgressCallback,
) -> tuple[Descriptor, dict[str, Any]]:
    """One launch: overlay on the chain's top, grow if asked, apply, hash, commit."""
    parent = chain[-1]
    workdir = store.new_temp()
    workdir.mkdir()
    try:
        parent_name = parent.digest.removeprefix("sha256:")
        # Each overlay names its parent by blob file name, which qemu resolves next to the file
        # it opened. While the new layer is built in workdir, symlinks of those names lead qemu
        # through the whole chain of blobs.
        for disk in chain:
            (workdir / disk.digest.removeprefix("sha256:")).symlink_to(store.blob_path(disk.digest))
        overlay = workdir / "layer.qcow2"
        parent_format = "qcow2" if parent.media_type == MEDIA_DISK_QCOW2 else "raw"
        qemu_img.create_overlay(overlay, parent_name, parent_format)
        grow_to = None
        if step.get("size") is not None:
            info = qemu_img.info(store.blob_path(parent.digest), parent_format)
            grow_to = customize.grow_size(step, int(str(info["virtual-size"])))
        if grow_to is not None:
            qemu_img.resize(overlay, grow_to)
        handle = guest.launch(
            [guest.Drive(overlay, "qcow2")],
            network=customize.needs_network(step),
            progress=progress,
        )
        try:
            if grow_to is not None:
                customize.grow_filesystems(handle)
            inspected = guest.mount_inspected(handle)
            result = customize.apply_step(handle, step, base_dir=base_dir, progress=progress)
            handle.shutdown()
        finally:
            handle.close()
        digest = "sha256:" + hash_file(overlay)["sha256"]
        layer = store.commit_file(
            overlay, digest, MEDIA_DISK_QCOW2, annotations={PARENT_ANNOTATION: parent.digest}
        )
    except RuntimeError as exc:  # libguestfs reports guest-side failures as RuntimeError
        raise CustomizeError(f"customization failed: {exc}") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return layer, {
        "inspection": inspected.to_json(),
        "messages": result.messages,
        "command_output": result.command_output,
        "generated_passwords": result.generated_passwords,
    }


def _tag_build(
    store: Store,
    ref: str,
    recipe: Recipe,
    base: Image,
    layers: list[Descriptor],
    step_records: list[dict[str, Any]],
) -> Image:
    inspection = next(
        (r["inspection"] for r in reversed(step_records) if r.get("inspection")),
        base.config.get("inspection"),
    )
    config = {
        **base_config(recipe.name, recipe.version, recipe.arch),
        "recipe": {
            "digest": recipe.digest,
            "path": str(recipe.path) if recipe.path else None,
            "text": recipe.text,
        },
        "base": {"ref": base.ref, "digest": base.digest, "source": base.config.get("source")},
        "source": base.config.get("source"),
        "verification": base.config.get("verification"),
        "steps": [*base.config.get("steps", []), *step_records],
        "inspection": inspection,
    }
    identity = (
        "sha256:"
        + hashlib.sha256(
            canonical_json(
                {"recipe": recipe.digest, "layers": [d.digest for d in layers], "base": base.digest}
            )
        ).hexdigest()
    )
    return _write(store, ref, identity, config, base, layers)


def _write(
    store: Store,
    ref: str,
    identity: str,
    config: Mapping[str, Any],
    base: Image,
    layers: list[Descriptor],
) -> Image:
    """Manifest = base disks + new layers + base evidence; then tag it.

    A ref already naming this very build is returned as it is: a warm rebuild writes nothing.
    """
    try:
        current = store.resolve(ref)
        if current.annotations.get(RECIPE_DIGEST_ANNOTATION) == identity:
            return Image.from_descriptor(store, current, cached=True)
    except ImagekitError:
        pass
    base_layers = [Descriptor.from_json(layer) for layer in base.manifest["layers"]]
    disks = [d for d in base_layers if d.media_type in _DISK_MEDIA]
    evidence = [d for d in base_layers if d.media_type not in _DISK_MEDIA]
    manifest = store.write_manifest(
        config,
        [*disks, *layers, *evidence],
        {CREATED_ANNOTATION: str(config["created"])},
        subject=store.resolve(base.digest),
    )
    store.tag(
        ref,
        Descriptor(
            manifest.media_type,
            manifest.digest,
            manifest.size,
            {RECIPE_DIGEST_ANNOTATION: identity},
        ),
    )
    return Image.load(store, ref)


def _cached_record(cache: BuildCache, key: str) -> dict[str, Any]:
    try:
        record = json.loads((cache.directory / f"{key}.record").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _save_record(cache: BuildCache, key: str, outcome: Mapping[str, Any]) -> None:
    """What a step printed and found, so a cached layer's manifest says the same."""
    cache.write(f"{key}.record", dict(outcome))


def _key(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(identity))).hexdigest()


def _scratch_identity(source: ScratchSource) -> dict[str, Any]:
    return {
        "content": _content_digest(source.content),
        "size": source.size,
        "partition_table": source.partition_table,
        "filesystem": source.filesystem,
        "label": source.label,
        "format": source.format,
    }


def _content_digest(path: Path) -> str:
    """Digest of a tarball, or of a directory tree's names, modes, link targets and bytes."""
    if path.is_file():
        return "sha256:" + hash_file(path)["sha256"]
    if not path.is_dir():
        raise RecipeError(f"scratch content {path} is neither a directory nor a tarball")
    digest = hashlib.sha256()
    for entry in sorted(path.rglob("*")):
        relative = entry.relative_to(path).as_posix()
        info = entry.lstat()
        digest.update(f"{relative}\0{info.st_mode:o}\0".encode())
        if entry.is_symlink():
            digest.update(os.readlink(entry).encode())
        elif entry.is_file():
            digest.update(hash_file(entry)["sha256"].encode())
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)

"""Build: a base image, then one qcow2 overlay layer per customization step, cached by inputs.

The base comes from its source kind (downloaded, scratch, kickstart install, or another
recipe's build), each keyed so that editing a step neither re-fetches nor re-verifies it. Then
:mod:`imagekit.build.layers` adds a cached layer per step. The result is tagged with an identity
of recipe, base and layers: a warm rebuild writes nothing and launches nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagekit import catalog, customize, provenance
from imagekit.build import acceptance
from imagekit.build.cache import BuildCache
from imagekit.build.layers import LayerReport, Layers, StepRun, apply_steps
from imagekit.core.digest import file_digest, hexpart, identity
from imagekit.core.refs import parse_ref
from imagekit.image import Image
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import CREATED_ANNOTATION, DISK_FORMATS, MEDIA_EVIDENCE_BOOT_LOG
from imagekit.recipe import (
    HttpSource,
    KickstartSource,
    Recipe,
    RecipeSource,
    ScratchSource,
    load_base,
)
from imagekit.sources import scratch
from imagekit.sources.session import Session

if TYPE_CHECKING:  # the registry client loads only with --cache-from/--cache-to
    from imagekit.build.remote import RemoteCache


@dataclass(frozen=True)
class BuildResult:
    image: Image
    layers: list[LayerReport] = field(default_factory=list)
    generated_passwords: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Builder:
    """One build's shared state: the pull session (store, options, progress) and the cache."""

    session: Session
    use_cache: bool = True
    remote: RemoteCache | None = None  # a registry's shared build cache (--cache-from/-to)

    @property
    def cache(self) -> BuildCache:
        return BuildCache(self.session.layout)

    def step_run(self, base_dir: Path) -> StepRun:
        session = self.session
        return StepRun(
            session.layout, self.cache, base_dir, self.use_cache, session.progress, self.remote
        )


def build(builder: Builder, recipe: Recipe, *, tag: str | None = None) -> BuildResult:
    """Build ``recipe`` (pulling or building its base as needed) and tag it.

    Once its steps are parsed, only the recorded form of the recipe (its secrets shown as the
    step records show them) goes on: into provenance, the base's config and the ref's identity.
    A ``[test]`` or ``[check]`` runs after the last layer (:mod:`imagekit.build.acceptance`);
    if it fails, the ref is not tagged.
    """
    ref = str(parse_ref(tag)) if tag else recipe.ref
    layout = builder.session.layout
    with layout.shared_lock():
        steps = [
            customize.parse_step(table, where=f"{recipe.path or recipe.name} customize[{i}]")
            for i, table in enumerate(recipe.customize)
        ]
        recipe = customize.recorded_recipe(recipe)
        profile = acceptance.recipe_profile(recipe)
        base, reports = _base(builder, recipe)
        base_dir = recipe.path.parent if recipe.path else Path.cwd()
        run = builder.step_run(base_dir)
        added = apply_steps(run, base, steps, reports)
        if builder.remote is not None:
            builder.remote.publish([r["key"] for r in added.records], added.disks)
        key = identity(
            {
                "recipe": recipe.digest,
                "layers": [d.digest for d in added.disks],
                "base": base.digest,
            }
        )
        config = {
            **provenance.recipe_config(recipe),
            "base": {"ref": base.ref, "digest": base.digest, "source": base.config.get("source")},
            "source": base.config.get("source"),
            "verification": base.config.get("verification"),
            "steps": [*base.config.get("steps", []), *added.records],
            "inspection": _inspection(base, added),
        }
        top = [*base.disks, *added.disks][-1].digest
        proofs = acceptance.plan(layout, recipe, profile, ref, top)
        if proofs is None:
            image = _write(builder, ref, key, config, base, added)
            return BuildResult(image, reports, added.passwords)
        key = identity({"build": key, **proofs.keys})
        proof = acceptance.Proof()
        if catalog.find(layout, ref, key) is None:
            proof = acceptance.prove(proofs, run, lambda: _unproven(builder, config, base, added))
        image = _write(builder, ref, key, {**config, **proof.config}, base, added, proof.layers)
        return BuildResult(image, reports, added.passwords)


def customize_image(
    builder: Builder,
    ref: str,
    table: Mapping[str, Any],
    *,
    tag: str | None = None,
    base_dir: Path | None = None,
) -> BuildResult:
    """Apply one ad-hoc step to a stored image; the result is a new layer and a new ref."""
    step = customize.parse_step(table, where="customize")
    layout = builder.session.layout
    with layout.shared_lock():
        base = Image.load(layout, ref)
        new_ref = parse_ref(tag) if tag else parse_ref(f"{base.ref or 'image'}-custom")
        reports: list[LayerReport] = []
        added = apply_steps(builder.step_run(base_dir or Path.cwd()), base, [step], reports)
        key = identity({"customize": base.digest, "layers": [d.digest for d in added.disks]})
        config = {
            **provenance.base_config(new_ref.name, new_ref.tag, base.config.get("arch")),
            "base": {"ref": base.ref, "digest": base.digest},
            "verification": base.config.get("verification"),
            "steps": [*base.config.get("steps", []), *added.records],
            "inspection": _inspection(base, added),
        }
        image = _write(builder, str(new_ref), key, config, base, added)
        return BuildResult(image, reports, added.passwords)


def _inspection(base: Image, added: Layers) -> Any:
    """The newest step's guest inspection, else the base's."""
    return next(
        (r["inspection"] for r in reversed(added.records) if r.get("inspection")),
        base.config.get("inspection"),
    )


def _base(builder: Builder, recipe: Recipe) -> tuple[Image, list[LayerReport]]:
    """The image the steps start from, with a report line for it."""
    source = recipe.source
    started = time.monotonic()
    if isinstance(source, RecipeSource):
        result = build(builder, load_base(source), tag=None)
        return result.image, result.layers
    if isinstance(source, HttpSource):
        image, cached = _http_base(builder, recipe, source)
        name = f"fetch {source.filename}"
    elif isinstance(source, KickstartSource):
        image, cached = _kickstart_base(builder, recipe, source)
        name = f"kickstart install from {source.installer_recipe or source.kickstart.name}"
    else:
        image, cached = _scratch_base(builder, recipe, source)
        name = f"scratch {source.filesystem} from {source.content.name}"
    seconds = round(time.monotonic() - started, 3)
    return image, [LayerReport(name, image.disk_digest, cached, seconds)]


def _http_base(builder: Builder, recipe: Recipe, source: HttpSource) -> tuple[Image, bool]:
    """Keyed by :func:`http_base_identity`: editing a step must not re-fetch the base, a new
    signed checksum file must."""
    session, cache = builder.session, builder.cache
    key = identity(http_base_identity(session, recipe, source))
    hit = cache.get(key) if builder.use_cache else None
    if hit is not None:
        return Image.from_descriptor(session.layout, hit, cached=True), True
    from imagekit.sources import http  # the download code loads for downloaded bases only

    image = http.fetch_image(session, recipe)
    cache.put(key, Descriptor(image.manifest["mediaType"], image.digest, 0))
    return image, False


def http_base_identity(session: Session, recipe: Recipe, source: HttpSource) -> Any:
    """What a downloaded base is keyed by: the source alone (not the steps), its verified
    upstream identity and its key files. Nightly builds compare it too (build/inputs.py)."""
    from imagekit.sources import http

    source_only = replace(
        recipe, customize=(), text=json.dumps(asdict(source), default=str, sort_keys=True)
    )
    return {
        "http": http.verified_identity(session, source_only),
        "keys": [file_digest(k) for k in source.keys],
    }


def _kickstart_base(
    builder: Builder, recipe: Recipe, source: KickstartSource
) -> tuple[Image, bool]:
    """Validate and fetch first (cheap), then install only if this build key was never built.

    The key lock makes a concurrent identical build wait for the first one and reuse it.
    """
    from imagekit.sources.kickstart import install as kickstart

    session, cache = builder.session, builder.cache
    prepared = kickstart.prepare(session, recipe, source)
    with session.layout.digest_lock(f"kickstart-{hexpart(prepared.key)}"):
        hit = cache.get(prepared.key) if builder.use_cache else None
        if hit is not None:
            return Image.from_descriptor(session.layout, hit, cached=True), True
        image = kickstart.install(session.layout, recipe, prepared, session.progress)
        cache.put(prepared.key, Descriptor(image.manifest["mediaType"], image.digest, 0))
        return image, False


def _scratch_base(builder: Builder, recipe: Recipe, source: ScratchSource) -> tuple[Image, bool]:
    """Scratch disks are not bit-identical (ext4 UUIDs, timestamps): the key lock makes a
    concurrent identical build wait for the first one's disk and reuse it."""
    session, cache = builder.session, builder.cache
    key = identity(
        {"scratch": scratch.scratch_identity(source), "code": scratch.SCRATCH_CODE_VERSION}
    )
    with session.layout.digest_lock(f"build-{hexpart(key)}"):
        hit = cache.get(key) if builder.use_cache else None
        if hit is not None:
            return Image.from_descriptor(session.layout, hit, cached=True), True
        image = scratch.scratch_image(session.layout, recipe, session.progress)
        cache.put(key, Descriptor(image.manifest["mediaType"], image.digest, 0))
        return image, False


def _write(
    builder: Builder,
    ref: str,
    key: str,
    config: Mapping[str, Any],
    base: Image,
    added: Layers,
    proofs: Sequence[Descriptor] = (),
) -> Image:
    """Manifest = base disks + new layers + base evidence + this build's proofs; then tag it.

    A ref already naming this very build is returned as it is: a warm rebuild writes nothing.
    """
    layout = builder.session.layout
    current = catalog.find(layout, ref, key)
    if current is not None:
        return current
    manifest = _manifest(builder, config, base, [*added.disks, *_evidence(base), *proofs])
    return catalog.tag(layout, ref, key, manifest, builder.session.progress)


def _unproven(builder: Builder, config: Mapping[str, Any], base: Image, added: Layers) -> Image:
    """The built image as an untagged manifest, for its test and check to read.

    The build holds the store's shared lock, so gc cannot sweep it meanwhile.
    """
    manifest = _manifest(builder, config, base, [*added.disks, *_evidence(base)])
    return Image.from_descriptor(builder.session.layout, manifest)


def _manifest(
    builder: Builder, config: Mapping[str, Any], base: Image, layers: Sequence[Descriptor]
) -> Descriptor:
    return builder.session.layout.write_manifest(
        config,
        [*base.disks, *layers],
        {CREATED_ANNOTATION: str(config["created"])},
        subject=builder.session.layout.resolve(base.digest),
    )


def _evidence(base: Image) -> list[Descriptor]:
    """The base's evidence, but not its boot log: that proved the base booted, not this."""
    return [
        descriptor
        for descriptor in map(Descriptor.from_json, base.manifest["layers"])
        if descriptor.media_type not in DISK_FORMATS
        and descriptor.media_type != MEDIA_EVIDENCE_BOOT_LOG
    ]

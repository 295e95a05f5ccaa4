"""One recipe of a nightly run: its key, then unchanged, published elsewhere, or built and pushed.

:class:`Runner` is what every recipe's thread shares (store, options, memory, claims, the
listener); :class:`RecipeJob` is one recipe's work once its key is known. A key another builder
holds raises :class:`Deferred` (the scheduler runs it again, waiting, once nothing else can
start); a key this builder holds has its claim renewed until the build is pushed or failed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from imagekit.errors import (
    BootError,
    CheckError,
    CustomizeError,
    FetchError,
    ImagekitError,
    UnsafeImageError,
    VerificationError,
)
from imagekit.image import Image
from imagekit.nightly.claims import Claims
from imagekit.nightly.graph import Node
from imagekit.nightly.memory import MemoryBudget, memory_need
from imagekit.nightly.options import NightlyOptions, key_tag
from imagekit.nightly.report import (
    BUILT,
    FAIL,
    FAILED,
    PUBLISHED,
    SKIP,
    SKIPPED,
    UNCHANGED,
    RecipeResult,
    Stage,
)
from imagekit.progress import ProgressEvent
from imagekit.recipe import Recipe

if TYPE_CHECKING:
    from imagekit.build import BuildResult
    from imagekit.store import Store

Listener = Callable[[RecipeResult], None]  # called (from any thread) when a result changes


class Runner:
    """What every recipe's thread shares: the store, the options, the memory, the listener."""

    def __init__(
        self, store: Store, options: NightlyOptions, budget: MemoryBudget, listener: Listener | None
    ) -> None:
        self.store = store
        self.options = options
        self.budget = budget
        self.listener = listener
        self.results: list[RecipeResult] = []
        self.claims: Claims | None = None
        self.cancelled = threading.Event()
        self._lock = threading.Lock()

    def keys(self) -> dict[Path, str]:
        """The input keys worked out so far, by recipe file: a dependant's base is among them."""
        with self._lock:
            return {Path(r.path): r.key for r in self.results if r.key is not None}

    def changed(self, result: RecipeResult, state: str) -> None:
        result.state = state
        if self.listener is not None:
            with self._lock:
                self.listener(result)

    def skip(self, result: RecipeResult, because: str) -> None:
        result.status, result.skipped_because = SKIPPED, because
        result.stages = [Stage("build", SKIP, message=f"skipped because {because}")]
        self.changed(result, SKIPPED)

    def run(self, node: Node, result: RecipeResult, waiting: bool = False) -> bool:
        """One recipe, start to end; every failure is recorded in ``result``, none raised.
        True: another builder holds its key, run it again ``waiting`` once nothing else can."""
        started = time.monotonic() - result.seconds
        stage = result.stages[0] if waiting else Stage("resolve")
        if not waiting:
            result.stages.append(stage)
        try:
            if node.recipe is None:
                raise _LoadFailed(node.error)
            recipe = node.recipe
            if not waiting:
                self.changed(result, "resolving")
                result.ref = recipe.ref
                result.key = self.store.input_key(
                    recipe,
                    known=self.keys(),
                    transport=self.options.transport,
                    **self.options.network,
                )
                stage.seconds = time.monotonic() - started
            RecipeJob(self, recipe, result).run(waiting)
        except Deferred as exc:
            result.seconds = time.monotonic() - started
            self.changed(result, str(exc))
            return True
        except (ImagekitError, _LoadFailed) as exc:
            self._failed(result, exc)
        except Exception as exc:  # one recipe's bug must not stop the night: report it
            self._failed(result, exc, f"{type(exc).__name__}: ")
        finally:
            result.seconds = time.monotonic() - started
            if not stage.seconds:
                stage.seconds = result.seconds
        self.changed(result, result.status)
        return False

    def _failed(self, result: RecipeResult, exc: Exception, prefix: str = "") -> None:
        """A load error exits 2 (a bad recipe), an imagekit error with its code, a bug 1."""
        result.status = FAILED
        result.error = prefix + str(exc)
        result.exit_code = exc.exit_code if isinstance(exc, ImagekitError) else 1
        if isinstance(exc, _LoadFailed):
            result.exit_code = 2
        failing = result.stages[-1]
        if failing.status != FAIL:
            failing.status, failing.message = FAIL, result.error


class _LoadFailed(Exception):
    """The recipe file did not load (its RecipeError's message, kept by the graph)."""


class Deferred(Exception):
    """Another builder holds this recipe's key: the message is the state shown meanwhile."""


_STAGE_OF = {
    BootError: "test",
    CheckError: "check",
    CustomizeError: "customize",
    FetchError: "fetch",
    VerificationError: "fetch",
    UnsafeImageError: "fetch",
}


class RecipeJob:
    """One recipe's work after its key is known."""

    def __init__(self, runner: Runner, recipe: Recipe, result: RecipeResult) -> None:
        self.runner = runner
        self.store = runner.store
        self.options = runner.options
        self.recipe = recipe
        self.result = result
        self.fetched: dict[str, int] = {}

    @property
    def target(self) -> str | None:
        push, key = self.options.push, self.result.key
        return None if push is None or key is None else f"{push}:{key_tag(self.recipe, key)}"

    def run(self, waiting: bool = False) -> None:
        """Unchanged, published, or built (and pushed); with a registry, built only once
        claimed: ``Deferred`` when another builder holds the key and we are not ``waiting``."""
        result = self.result
        unchanged = None if waiting else self._unchanged()
        if unchanged is None and self.target is not None and self._elsewhere(waiting):
            if result.digest is None:
                raise Deferred("claimed by another builder")
            result.status = PUBLISHED
            result.stages.append(Stage("push", cached=True, message=f"in {self.target}, signed"))
            return
        claims = self.runner.claims if unchanged is None and self.target is not None else None
        try:
            with claims.renewed(self.claim_tag) if claims else contextlib.nullcontext():
                self._make(unchanged)
        except BaseException:
            if unchanged is None:
                self._release()
            raise

    def _make(self, unchanged: Image | None) -> None:
        """Build (unless ``unchanged``), describe, and push what the registry lacks."""
        result = self.result
        image = unchanged or self._build()
        result.status = UNCHANGED if unchanged is not None else BUILT  # only once it is so
        self._describe(image)
        if self.target is None:
            return
        if unchanged is not None and self._published():
            result.stages.append(Stage("push", cached=True, message=f"in {self.target}, signed"))
        else:
            self._push(image)

    def _unchanged(self) -> Image | None:
        """The image this key built before, if its ref still names it."""
        from imagekit.build import BuildCache

        if not self.options.use_cache or self.result.key is None:
            return None
        hit = BuildCache(self.store).get(self.result.key)
        if hit is None:
            return None
        try:
            current = self.store.resolve(self.recipe.ref)
        except ImagekitError:
            return None
        return Image.load(self.store, self.recipe.ref) if current.digest == hit.digest else None

    def _published(self) -> bool:
        assert self.target is not None
        self.runner.changed(self.result, "asking the registry")
        digest = self.store.published(
            self.target,
            sign_key=self.options.sign_key,
            insecure=self.options.insecure,
            transport=self.options.transport,
        )
        self.result.digest = digest
        return digest is not None

    @property
    def claim_tag(self) -> str:
        assert self.result.key is not None
        return key_tag(self.recipe, self.result.key, ".claim")

    def _elsewhere(self, waiting: bool) -> bool:
        """True: published (``result.digest``) or claimed by another builder (no digest)."""
        if waiting:
            return self._awaited()
        return self._published() or not self._claimed()

    def _claimed(self) -> bool:
        """True once this builder holds the key's claim; False: another builder holds it."""
        assert self.runner.claims is not None
        self.runner.changed(self.result, "claiming")
        return self.runner.claims.may_build(self.claim_tag)

    def _awaited(self) -> bool:
        """True once the key is published; False once this builder claimed it."""
        claims, runner = self.runner.claims, self.runner
        assert claims is not None
        runner.changed(self.result, "waiting for another builder")
        done = claims.wait(self.claim_tag, self._published, runner.cancelled, self.options.poll)
        if done is None:
            raise Interrupted("interrupted while waiting for another builder")
        return done

    def _release(self) -> None:
        """After a failed build, let another builder have the key at once."""
        if self.runner.claims is not None and self.target is not None:
            self.runner.claims.release(self.claim_tag)

    def _progress(self, event: ProgressEvent) -> None:
        if event.stage in ("launch", "boot"):
            self.result.launches += 1
        if event.stage == "fetch" and event.done is not None and event.total != 1:
            self.fetched[event.message] = max(self.fetched.get(event.message, 0), event.done)

    def _build(self) -> Image:
        from imagekit.build import BuildCache

        result, options = self.result, self.options
        stage = Stage("build")
        result.stages.append(stage)
        self.runner.changed(result, "waiting for memory")
        started = time.monotonic()
        with self.runner.budget.share(memory_need(self.recipe)):
            if self.runner.cancelled.is_set():
                raise Interrupted("interrupted before it started")
            self.runner.changed(result, "building")
            cache = options.push if options.push else None
            try:
                built = self.store.build(
                    self.recipe,
                    use_cache=options.use_cache,
                    progress=self._progress,
                    transport=options.transport,
                    sign_key=options.sign_key,
                    cache_from=cache,
                    cache_to=cache,
                    insecure=options.insecure,
                    **options.network,
                )
            except ImagekitError as exc:
                stage.name = next(
                    (name for kind, name in _STAGE_OF.items() if isinstance(exc, kind)), "build"
                )
                stage.seconds = time.monotonic() - started
                raise
            finally:
                result.bytes_downloaded = sum(self.fetched.values())
        result.stages.remove(stage)
        self._stages(built)
        assert result.key is not None
        BuildCache(self.store).put(result.key, self.store.resolve(built.image.digest))
        return built.image

    def _stages(self, built: BuildResult) -> None:
        """One stage per layer report (the base's fetch, each step), then test and check."""
        result = self.result
        for layer in built.layers:
            name = layer.name if not layer.name.startswith("fetch ") else "fetch"
            message = layer.name if name == "fetch" else layer.note
            result.stages.append(
                Stage(name, seconds=layer.seconds, cached=layer.cached, message=message)
            )
            if layer.cached:
                result.layers_cached += 1
            else:
                result.layers_built += 1
                result.bytes_stored += self.store.blob_path(layer.digest).stat().st_size

    def _describe(self, image: Image) -> None:
        """What the report says of the image: digest, upstream, signatures, test and check."""
        result = self.result
        provenance = image.provenance
        result.digest = image.digest
        source = provenance.get("source") or {}
        if isinstance(source, dict) and source.get("kind") == "http":
            resolved = source.get("resolved") or {}
            result.upstream = {
                "url": source.get("url"),
                "filename": source.get("filename"),
                "release": resolved.get("release"),
                "compose": resolved.get("compose"),
                "verification": (provenance.get("verification") or {}).get("level"),
            }
        result.test, result.check = provenance.get("test"), provenance.get("check")
        for name, record in (("test", result.test), ("check", result.check)):
            if isinstance(record, dict):
                passed = record.get("passed", True)
                result.stages.append(Stage(name, "passed" if passed else FAIL, cached=True))
        result.signatures = [
            {"ref": s.ref, "signer": s.signer, "problem": s.problem}
            for s in self.store.signatures(image.digest)
        ]

    def _push(self, image: Image) -> None:
        """The image to its key's tag and to ``NAME-VERSION``, unless the registry has it."""
        assert self.target is not None and self.options.push is not None
        result = self.result
        stage = Stage("push")
        result.stages.append(stage)
        started = time.monotonic()
        self.runner.changed(result, "pushing")
        moving = f"{self.options.push}:{self.recipe.name}-{self.recipe.version}"
        for target in (self.target, moving):
            report = self.store.push(
                image.digest,
                target,
                insecure=self.options.insecure,
                transport=self.options.transport,
            )
            result.bytes_pushed += report.uploaded_bytes
            result.pushed_to.append(target)
        stage.seconds = time.monotonic() - started
        stage.message = f"pushed to {self.target}"


class Interrupted(ImagekitError):
    """Ctrl-C came before this recipe's build started."""

    exit_code = 130

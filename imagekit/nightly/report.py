"""What a nightly run found per recipe, as JSON (``--report``) and the one exit code.

Each recipe ends in one status: ``built``, ``unchanged`` (its input key equals the one recorded
at its last build, and its ref still names that build), ``published`` (the registry holds a
signed artifact for its key: another builder made it), ``failed`` or ``skipped`` (with
``skipped_because``: ``<recipe> failed``). Its stages (resolve, fetch, each step, test,
check, push) say what ran, for how long, and how it ended; JUnit XML is made from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BUILT, UNCHANGED, PUBLISHED, FAILED, SKIPPED = (
    "built",
    "unchanged",
    "published",
    "failed",
    "skipped",
)
PASSED = (BUILT, UNCHANGED, PUBLISHED)
PASS, FAIL, SKIP = "passed", "failed", "skipped"


@dataclass
class Stage:
    """One testcase of the recipe: ``resolve``, ``fetch ...``, ``step N``, ``test``, ``check``,
    ``push``; ``cached`` when it reused earlier work."""

    name: str
    status: str = PASS
    seconds: float = 0.0
    message: str = ""
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "message": self.message,
            "cached": self.cached,
        }


@dataclass
class RecipeResult:
    """One recipe's night. ``state`` is what the live display shows while it runs."""

    recipe: str  # NAME:VERSION, or the file name when it does not load
    path: str
    status: str = ""
    state: str = "waiting"
    skipped_because: str | None = None
    error: str | None = None
    exit_code: int = 0
    key: str | None = None
    ref: str | None = None
    digest: str | None = None
    upstream: dict[str, Any] | None = None
    layers_built: int = 0
    layers_cached: int = 0
    launches: int = 0
    seconds: float = 0.0
    bytes_downloaded: int = 0
    bytes_stored: int = 0
    bytes_pushed: int = 0
    pushed_to: list[str] = field(default_factory=list)
    signatures: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None
    check: dict[str, Any] | None = None
    stages: list[Stage] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status in PASSED

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "path": self.path,
            "status": self.status,
            "skipped_because": self.skipped_because,
            "error": self.error,
            "key": self.key,
            "ref": self.ref,
            "digest": self.digest,
            "upstream": self.upstream,
            "layers": {"built": self.layers_built, "cached": self.layers_cached},
            "launches": self.launches,
            "seconds": round(self.seconds, 3),
            "bytes": {
                "downloaded": self.bytes_downloaded,
                "stored": self.bytes_stored,
                "pushed": self.bytes_pushed,
            },
            "pushed_to": self.pushed_to,
            "signatures": self.signatures,
            "test": self.test,
            "check": self.check,
            "stages": [stage.to_json() for stage in self.stages],
        }


@dataclass
class NightlyReport:
    """Every recipe of the folder, in build order."""

    directory: str
    results: list[RecipeResult]
    seconds: float = 0.0
    jobs: int = 1

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def exit_code(self) -> int:
        """0 when every recipe passed; else the first failure's exit code (docs/cli.md), and
        1 when only skips remain (an interrupted run)."""
        if self.passed:
            return 0
        failed = [r.exit_code for r in self.results if r.status == FAILED]
        return failed[0] if failed else 1

    def counts(self) -> dict[str, int]:
        found = {status: 0 for status in (BUILT, UNCHANGED, PUBLISHED, FAILED, SKIPPED)}
        for result in self.results:
            found[result.status] = found.get(result.status, 0) + 1
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "jobs": self.jobs,
            "counts": self.counts(),
            "launches": sum(result.launches for result in self.results),
            "recipes": [result.to_json() for result in self.results],
        }

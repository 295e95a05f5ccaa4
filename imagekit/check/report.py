"""The resemblance report: each check's status, and whether every required one passed.

A check ``pass``-es when the value found is the one expected, ``differ``-s when the image has
another, and is ``missing`` when the image has nothing to read (no such package database,
unit file, configuration file or mount point). Only required checks decide ``passed``;
advisory ones are reported alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagekit.check.facts import Found
from imagekit.check.profile import READS, Check, Profile

PASS, DIFFER, MISSING = "pass", "differ", "missing"
STATUSES = (PASS, DIFFER, MISSING)


@dataclass(frozen=True)
class CheckResult:
    """One check against the image: what was expected, what was found, and how."""

    check: Check
    status: str
    found: str | bool | None
    detail: str

    @property
    def failed(self) -> bool:
        """A required check that did not pass."""
        return self.check.required and self.status != PASS

    def to_json(self) -> dict[str, Any]:
        check = self.check
        return {
            "id": check.id,
            "read": check.read,
            "name": check.name or None,
            "status": self.status,
            "expected": check.expect,
            "found": self.found,
            "detail": self.detail,
            "required": check.required,
            "source": check.source.to_json(),
            "note": check.note or None,
        }


def evaluate(check: Check, found: Found) -> CheckResult:
    """Compare what was found with what the check expects."""
    if found.value is None:
        return CheckResult(check, MISSING, None, found.detail)
    expected, value = check.expect, found.value
    if READS[check.read].fold and isinstance(expected, str) and isinstance(value, str):
        expected, value = expected.lower(), value.lower()
    status = PASS if value == expected else DIFFER
    return CheckResult(check, status, found.value, found.detail)


@dataclass(frozen=True)
class CheckReport:
    """A profile's checks against one image, and what inspection says the image is."""

    ref: str | None
    image: str  # manifest digest
    disk: str  # the top disk's digest: the chain that was read
    profile: Profile
    results: tuple[CheckResult, ...]
    os: dict[str, Any]

    @property
    def passed(self) -> bool:
        """Every required check passed."""
        return not self.failed

    @property
    def failed(self) -> list[CheckResult]:
        return [result for result in self.results if result.failed]

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.results) for status in STATUSES}

    def summary(self) -> str:
        """``fedora-server: 9 pass, 2 differ, 1 missing; required failed: a, b``."""
        counts = ", ".join(f"{n} {status}" for status, n in self.counts().items())
        failed = ", ".join(result.check.id for result in self.failed)
        verdict = f"required failed: {failed}" if failed else "every required check passed"
        return f"{self.profile.name}: {counts}; {verdict}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "image": self.image,
            "disk": self.disk,
            "profile": {
                "name": self.profile.name,
                "description": self.profile.description,
                "digest": self.profile.digest,
                "path": str(self.profile.path) if self.profile.path else None,
            },
            "os": self.os,
            "passed": self.passed,
            "counts": self.counts(),
            "checks": [result.to_json() for result in self.results],
        }

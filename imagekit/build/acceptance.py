"""A recipe's ``[test]`` and ``[check]``: proven once the last layer is built, before tagging.

Both read the image through its top disk, which names its whole chain, so each outcome is keyed
by that disk and by the test's or the profile's inputs, and kept in the build cache: a rebuild
with a recorded pass boots nothing and launches nothing. A boot that passed is recorded; one
that failed is not (it may pass on a quieter host) and raises BootError. A check is a pure
function of disk and profile, so its report is recorded either way, and a failed required
check raises CheckError until the image or the profile changes. Either failure leaves the ref
as it was, and the layers cached: fixing the test costs no rebuild.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagekit import provenance
from imagekit.build.layers import StepRun
from imagekit.check import Profile, check_image, load_profile
from imagekit.core.digest import hexpart, identity, keyed_digest
from imagekit.errors import BootError, CheckError, RecipeError
from imagekit.image import Image
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import MEDIA_EVIDENCE_BOOT_LOG
from imagekit.progress import ProgressEvent
from imagekit.recipe import BootTest, ProfileCheck, Recipe

if TYPE_CHECKING:  # the boot code loads only when a [test] runs: warm builds skip it
    from imagekit.boot import BootOptions

TEST_CODE_VERSION = 1  # bump when what a passed test means changes: recorded passes re-run
CHECK_CODE_VERSION = 1  # bump when the readers change what they find: recorded reports re-run

Unproven = Callable[[], Image]  # the built image, untagged, written when a proof must run


@dataclass(frozen=True)
class Acceptance:
    """What a build must prove of one image before tagging it, and each proof's cache key."""

    ref: str
    test: BootTest | None = None
    test_key: str = ""
    check: ProfileCheck | None = None
    profile: Profile | None = None
    check_key: str = ""

    @property
    def keys(self) -> dict[str, str]:
        """Part of the ref's identity: a changed seed or profile is proven again."""
        return {"test": self.test_key, "check": self.check_key}


@dataclass
class Proof:
    """What the image's config and manifest gain: the records, and the boot's console log."""

    config: dict[str, Any] = field(default_factory=dict)
    layers: list[Descriptor] = field(default_factory=list)


def recipe_profile(recipe: Recipe) -> Profile | None:
    """The profile ``[check]`` names, read before any layer is built: a typo fails at once."""
    check = recipe.check
    return None if check is None else load_profile(check.profile, base_dir=check.base_dir)


def plan(
    layout: Layout, recipe: Recipe, profile: Profile | None, ref: str, disk: str
) -> Acceptance | None:
    """The proofs ``recipe`` asks of the image whose top disk is ``disk``; None if none."""
    test = recipe.test if recipe.test is not None and recipe.test.boot else None
    check = recipe.check if profile is not None else None
    if test is None and check is None:
        return None
    test_key = check_key = ""
    if test is not None:
        inputs = boot_test_inputs(layout, test)
        test_key = identity({"disk": disk, "test": inputs, "code": TEST_CODE_VERSION})
    if profile is not None:
        check_key = identity({"disk": disk, "profile": profile.digest, "code": CHECK_CODE_VERSION})
    return Acceptance(ref, test, test_key, check, profile, check_key)


def prove(acceptance: Acceptance, run: StepRun, unproven: Unproven) -> Proof:
    """Run (or read back) the test, then the check; BootError or CheckError on a failure."""
    image = functools.cache(unproven)  # written once, and only if a proof must run
    proof = Proof()
    if acceptance.test is not None:
        record, log = _boot(acceptance, acceptance.test, run, image)
        proof.config["test"] = record
        proof.layers.append(log)
    check, profile = acceptance.check, acceptance.profile
    if check is not None and profile is not None:
        proof.config["check"] = _check(acceptance, check, profile, run, image)
    return proof


def boot_options(test: BootTest) -> BootOptions:
    """``[test]`` as the boot check's options, as ``imagekit boot`` takes them."""
    from imagekit.boot import BootOptions, SeedSpec

    ci = test.cloud_init
    spec = None
    if ci is not None:
        spec = SeedSpec(
            hostname=ci.hostname or None,
            user=ci.user or None,
            ssh_keys=ci.ssh_keys,
            packages=ci.packages,
            runcmd=ci.runcmd,
            user_data=ci.user_data,
            network_config=ci.network_config,
        )
    return BootOptions(
        seed=test.seed,
        cloud_init=spec,
        seedless=test.seedless,
        marker=test.marker or None,
        timeout=test.timeout,
        ssh=test.ssh or None,
        ssh_user=test.ssh_user or None,
        ssh_key=test.identity,
        memory_mib=test.memory >> 20,
        vcpus=test.vcpus,
        inactivity=test.inactivity,
    )


def _boot(
    acceptance: Acceptance, test: BootTest, run: StepRun, unproven: Unproven
) -> tuple[dict[str, Any], Descriptor]:
    layout, key = run.layout, acceptance.test_key
    with layout.digest_lock(f"test-{hexpart(key)}"):  # a concurrent build waits, then reuses
        recorded = run.cache.record(key) if run.use_cache else {}
        log = _stored(layout, recorded.get("console_log"))
        if recorded.get("test", {}).get("passed") and log is not None:
            run.progress(ProgressEvent("test", f"{acceptance.ref}: passed its boot test before"))
            return dict(recorded["test"]), log
        from imagekit.boot import boot_check

        try:
            report = boot_check(layout, unproven(), boot_options(test), progress=run.progress)
        except BootError as exc:
            raise BootError(f"{acceptance.ref} [test]: {exc}") from exc
        log = layout.add_bytes(report.console_log.read_bytes(), MEDIA_EVIDENCE_BOOT_LOG)
        record = provenance.test_record(report.to_json(), log)
        run.cache.save_record(key, {"test": record, "console_log": log.to_json()})
        return record, log


def _check(
    acceptance: Acceptance, check: ProfileCheck, profile: Profile, run: StepRun, unproven: Unproven
) -> dict[str, Any]:
    key = acceptance.check_key
    report = run.cache.record(key).get("check") if run.use_cache else None
    if not isinstance(report, dict):
        checked = check_image(run.layout, unproven(), profile, progress=run.progress)
        report = provenance.check_record(checked.to_json(), check.required)
        run.cache.save_record(key, {"check": report})
    else:
        run.progress(ProgressEvent("check", f"{acceptance.ref}: checked against {profile.name}"))
    if check.required and not report["passed"]:
        failed = "; ".join(
            f"{c['id']}: expected {c['expected']!r}, {c['status']} ({c['found']!r})"
            for c in report["checks"]
            if c["required"] and c["status"] != "pass"
        )
        raise CheckError(
            f"{acceptance.ref} [check]: it does not resemble {profile.name}: {failed}; fix the "
            "image, or set required = false in [check] to record the report and go on"
        )
    return {**report, "required": check.required}


def _stored(layout: Layout, record: Any) -> Descriptor | None:
    """The recorded console log, if gc has not removed it since (else the test runs again)."""
    if not isinstance(record, dict):
        return None
    try:
        descriptor = Descriptor.from_json(record)
    except (KeyError, TypeError, ValueError):
        return None
    return descriptor if layout.has_blob(descriptor.digest) else None


def boot_test_inputs(layout: Layout, test: BootTest) -> Any:
    """The test's settings with each file it names replaced by a keyed digest of its bytes.

    A seed or user-data may hold secrets, so they enter the key keyed by the store's digest
    key (as secrets of steps do), never as a plain hash.
    """
    digest_key = layout.digest_key()

    def content(value: object) -> str:
        if not isinstance(value, Path):
            raise TypeError(f"unexpected {type(value).__name__} in [test]")
        try:
            return keyed_digest(digest_key, value.read_bytes())
        except OSError as exc:
            raise RecipeError(f"[test]: cannot read {value}: {exc.strerror or exc}") from exc

    return json.loads(json.dumps(asdict(test), default=content))

"""Customization: one table of operations drives recipe steps, CLI flags, docs and the guest.

spec (what an operation is) → ops/* (the operations, one module per subject) → table (their
application order) → steps (parse, build key, manifest, docs) → apply (in the guest); redact
gives the recipe as provenance may record it.
"""

from imagekit.customize.apply import apply_step
from imagekit.customize.context import StepResult
from imagekit.customize.ops.passwords import sha512_crypt
from imagekit.customize.redact import recorded_recipe
from imagekit.customize.spec import ArgKind, Operation, OperationSpec
from imagekit.customize.steps import (
    STEP_CODE_VERSION,
    Step,
    canonical_step,
    grow_size,
    inspected_after,
    manifest_step,
    needs_network,
    parse_step,
    reference,
)
from imagekit.customize.table import OPERATIONS

__all__ = [
    "OPERATIONS",
    "STEP_CODE_VERSION",
    "ArgKind",
    "Operation",
    "OperationSpec",
    "Step",
    "StepResult",
    "apply_step",
    "canonical_step",
    "grow_size",
    "inspected_after",
    "manifest_step",
    "needs_network",
    "parse_step",
    "recorded_recipe",
    "reference",
    "sha512_crypt",
]

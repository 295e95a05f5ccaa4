"""Customization: one table of operations drives recipe steps, CLI flags, docs and the guest."""

from imagekit.customize.steps import (
    OPERATIONS,
    STEP_CODE_VERSION,
    ArgKind,
    Operation,
    OperationSpec,
    Step,
    StepResult,
    apply_step,
    canonical_step,
    grow_size,
    manifest_step,
    needs_network,
    parse_step,
    reference,
    sha512_crypt,
)

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
    "manifest_step",
    "needs_network",
    "parse_step",
    "reference",
    "sha512_crypt",
]

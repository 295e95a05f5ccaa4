"""Applying a step to the mounted guest, operation by operation in table order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagekit.customize.context import Context, StepResult
from imagekit.customize.spec import Operation, OperationSpec
from imagekit.customize.steps import Step
from imagekit.customize.table import OPERATIONS
from imagekit.errors import CustomizeError
from imagekit.guest.appliance import InspectedOS
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress


def apply_step(
    g: Any,
    step: Step,
    guest_os: InspectedOS,
    *,
    base_dir: Path,
    progress: ProgressCallback = ignore_progress,
) -> StepResult:
    """Apply ``step`` to the guest ``guest_os`` describes, mounted (``appliance.mount_os``);
    size excepted.

    Everything is done through libguestfs file calls, so it works on any Linux guest; only
    ``run_command`` and ``install`` execute guest programs.
    """
    ctx = Context(g, guest_os, base_dir, StepResult())
    for op in step.operations:
        spec = OPERATIONS[op.name]
        if spec.apply is None:
            continue
        progress(ProgressEvent("customize", f"{op.name} {_brief(spec, op)}"))
        try:
            spec.apply(ctx, op.values)
        except RuntimeError as e:
            raise CustomizeError(f"{op.name} {_brief(spec, op)}: {e}") from e
    return ctx.result


def _brief(spec: OperationSpec, op: Operation) -> str:
    """The operation's values for progress and errors: secrets shown as "set", long ones cut."""
    text = " ".join(spec.shown(v) for v in op.values) if not isinstance(op.arg, bool) else ""
    return text if len(text) <= 80 else text[:77] + "..."

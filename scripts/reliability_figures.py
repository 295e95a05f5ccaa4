"""Turn the figures one reliability run printed into docs/reliability.md's "last run" column.

It runs nothing itself. Give it what a run left: the JSON file the suite writes when
``IMAGEKIT_FIGURES=PATH`` is set, or the pytest output captured in a file::

    IMAGEKIT_FIGURES=figures.json .venv/bin/pytest -q tests/reliability | tee run.txt
    .venv/bin/python scripts/reliability_figures.py figures.json          # print the table
    .venv/bin/python scripts/reliability_figures.py run.txt --write       # update the doc

A row's cell comes from its template in ``TEMPLATES`` (keyed by the row's first test, or by its
promise when it names none): ``{name}`` is a printed figure or note, ``{name|0}`` falls back to
``0`` when the run never counted it. A row without a template whose cell is written as the suite
prints figures (``name: value``, several joined by ``; ``) gets the run's values for the names
it printed. A row whose figures are not in the run (tests that did not run, e.g.
``-m "not guestfs"``) keeps its cell, and is listed on stderr. The "Last run:" line is rewritten
from the run's outcome counts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
_PLACEHOLDER = re.compile(r"\{([^{}|]+)(?:\|([^{}]*))?\}")
_SUMMARY = re.compile(r"(\d+ [a-z]+(?:, \d+ [a-z]+)*) in ([\d.]+)s")
_SECTION = re.compile(r"^=+ (.*?) =+$")
_FIRST_TEST = re.compile(r"`([^`]+)`")

TEMPLATES = {
    "test_kill.py::test_kill_at_byte_offsets_resumes_each_time": (
        "{kill points: download byte offsets} seeded byte offsets, each run resuming the last "
        "one's partial"
    ),
    "test_kill.py::test_kill_in_the_commit_phase": (
        "{kill points: commit phase} kill points; bytes sent by the server = image size exactly"
    ),
    "test_kill.py::test_kill_after_random_delays": (
        "{kill points: random delays} kills, all required ({random-delay kills during the image "
        "download|0} during the image download), delays {random kill delays (s)} s"
    ),
    "test_kill.py::test_kill_gc_mid_sweep": "{kill points: gc sweep} kill points",
    "test_kill.py::test_kill_export_leaves_old_destination_and_store": (
        "{kill points: export} kill points"
    ),
    "all of the above": "**{kills survived} kills survived**, seed {kill seed}",
    "test_durability.py": (
        "{commits traced in order (write, fsync, rename/link, fsync dir)} commits traced in "
        "order: `oci-layout`, the empty `index.json`, a blob, a download's sidecar, the "
        "downloaded blob, the tagged `index.json`"
    ),
    "test_concurrency.py::test_eight_processes_pulling_one_image_download_it_once": (
        "{concurrent pulls of one image (all succeeded, 1 download)} pulls, 1 GET"
    ),
    "test_concurrency.py::test_pulls_racing_gc_lose_nothing": (
        "{pulls racing gc (all succeeded)} pulls, {gc runs during those pulls} gc runs alongside"
    ),
    "test_concurrency.py::test_two_processes_adding_different_refs_keep_all_of_them": (
        "{processes adding refs concurrently (no ref lost)} processes, 13 refs"
    ),
    "test_disk_full.py": "{disk-full cases ending in a clear error and a usable store} cases pass",
    "test_flaky_server.py": (
        "{flaky-server cases ending in the right image} cases end in the right image (each "
        "after the fault it was given), {flaky-server cases ending in a clear error} in a "
        "clear error"
    ),
    "test_hostile_images.py": (
        "{hostile images refused by a full pull} hostile files refused: backing file (absolute, "
        "relative, `json:`, nbd, http, NUL, qemu-made), external data file, huge L1 / refcount "
        "table, L1 past EOF, snapshot count, unknown feature bit, LUKS, truncated header, "
        "qcow2-as-raw, raw-as-qcow2, VMDK, flat VMDK descriptor, VHDX, ISO, qcow v1"
    ),
    "test_hostile_evidence.py": (
        "{hostile checksum files / signatures refused by a full pull} cases: forged lines "
        "around the clearsigned block, dash-escaping (and an unescaped forgery), a second "
        "signature by an unpinned key, a signer in the keyring but not pinned, expired key, "
        "revoked key, the image listed twice with different digests, a signed size that "
        "disagrees"
    ),
    "test_names.py": "{hostile names refused} hostile names refused",
    "test_properties.py": (
        "test-body runs (hypothesis, incl. replays): recipe loader {hypothesis examples: recipe "
        "loader}, checksum parser {hypothesis examples: checksum parser}, index.json "
        "{hypothesis examples: index.json}, manifest blobs {hypothesis examples: manifest "
        "blobs}, qcow2 headers {hypothesis examples: qcow2 headers}, refs {hypothesis "
        "examples: refs}, lock keys {hypothesis examples: lock keys}"
    ),
    "test_fuzz.py": (
        "executions from the seed corpora: recipe {fuzz executions: recipe} ({fuzz time: "
        "recipe}), checksums {fuzz executions: checksums} ({fuzz time: checksums}), "
        "store_index {fuzz executions: store_index} ({fuzz time: store_index}), qcow2 {fuzz "
        "executions: qcow2} ({fuzz time: qcow2}); longer campaigns while writing them: "
        "checksums 952,394 execs / 150 s, qcow2 183,750, store_index 45,199, recipe: 3 crashes "
        "(at ~1,100, ~25,000 and <60 s of executions; fixed, below), then 674,320 execs / 45 s "
        "clean"
    ),
    "test_build_concurrency.py": (
        "{concurrent builds: builders} builders, {concurrent builds: appliance launches} "
        "appliance boots (counted by a qemu wrapper), {concurrent builds: wall time}; before "
        "the fix: 4 launches and two different layer chains"
    ),
    "test_build_kills.py": (
        "**{build kills survived} build kills survived**; qemu outlived its builder by at most "
        "{build kills: longest a qemu outlived its killed builder}; before the fixes: the "
        "scratch leftover survived `gc`, and the cache-put kill lost the step's inspection"
    ),
}


@dataclass
class Run:
    """What one run printed: counted figures, notes, and its outcome line."""

    figures: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    args: list[str] = field(default_factory=list)

    def value(self, name: str, default: str | None) -> str | None:
        if name in self.figures:
            return str(self.figures[name])
        return self.notes.get(name, default)


def read_run(path: Path) -> Run:
    """A run from the IMAGEKIT_FIGURES JSON file or from captured pytest output."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        record = json.loads(text)
    except ValueError:
        return _parse_output(text)
    outcomes = ", ".join(f"{n} {kind}" for kind, n in record.get("outcomes", {}).items())
    return Run(
        figures={str(k): int(v) for k, v in record.get("figures", {}).items()},
        notes={str(k): str(v) for k, v in record.get("notes", {}).items()},
        summary=f"{outcomes} in {record.get('seconds', 0)}s",
        args=[str(a) for a in record.get("args", [])],
    )


def _parse_output(text: str) -> Run:
    """The "reliability figures" section (``name: value`` lines) and the final outcome line."""
    run = Run()
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        section = _SECTION.match(line)
        if section:
            inside = section.group(1) == "reliability figures"
            summary = _SUMMARY.search(section.group(1))
            run.summary = summary.group(0) if summary else run.summary
            continue
        summary = _SUMMARY.fullmatch(line) or _SUMMARY.match(line)
        if summary and not inside:
            run.summary = summary.group(0)
        elif inside and ": " in line:
            name, value = line.rsplit(": ", 1)
            if value.isdigit():
                run.figures[name] = int(value)
            else:
                run.notes[name] = value
        elif inside:
            inside = False
            if summary:
                run.summary = summary.group(0)
    return run


def render(template: str, run: Run) -> str | None:
    """The template filled from the run, or None when a figure it needs was not printed."""
    missing: list[str] = []

    def fill(match: re.Match[str]) -> str:
        value = run.value(match.group(1), match.group(2))
        if value is None:
            missing.append(match.group(1))
            return ""
        return value

    text = _PLACEHOLDER.sub(fill, template)
    return None if missing else text


def refresh_printed(cell: str, run: Run) -> str | None:
    """A ``name: value[; name: value]`` cell with the run's values, or None if it has none."""
    parts, changed = [], False
    for part in cell.split("; "):
        name, colon, _ = part.rpartition(": ")
        value = run.value(name, None) if colon else None
        parts.append(part if value is None else f"{name}: {value}")
        changed = changed or value is not None
    return "; ".join(parts) if changed else None


def row_key(cells: list[str]) -> str:
    """A row's first test (``file.py::name`` or ``file.py``), else its promise."""
    found = _FIRST_TEST.search(cells[1])
    return found.group(1) if found else cells[0]


def update(doc: str, run: Run) -> tuple[str, list[str]]:
    """The doc with every row the run has figures for refreshed, and what was left as it was."""
    out, kept = [], []
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and not set(cells[0]) <= {"-"}:
            key = row_key(cells)
            template = TEMPLATES.get(key)
            filled = render(template, run) if template else refresh_printed(cells[2], run)
            if filled is not None:
                line = "|" + "|".join(f" {c} " if c else " " for c in [*cells[:2], filled]) + "|"
            elif key != "promise":
                kept.append(f"{key}: not in this run")
        elif line.startswith("Last run:") and run.summary:
            command = " ".join(["pytest", *run.args]) if run.args else "pytest tests/reliability"
            line = (
                f"Last run: `{run.summary}` (`{command}`) on the 2-core development machine; "
                "rows of tests that run did not include keep their earlier figures."
            )
        out.append(line)
    return "\n".join(out) + "\n", kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("run", type=Path, help="IMAGEKIT_FIGURES JSON or captured pytest output")
    parser.add_argument("--doc", type=Path, default=DOC, help="the doc (default: %(default)s)")
    parser.add_argument("--write", action="store_true", help="rewrite the doc in place")
    args = parser.parse_args(argv)
    run = read_run(args.run)
    if not run.figures and not run.notes:
        print(f"{args.run}: no reliability figures in it", file=sys.stderr)
        return 1
    text, kept = update(args.doc.read_text(encoding="utf-8"), run)
    for row in kept:
        print(f"kept as it was: {row}", file=sys.stderr)
    if args.write:
        args.doc.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark an ``imagekit build`` step against virt-customize: cold, multi-step, warm, bytes.

Everything is made here, offline: the busybox guest tree of ``tests/guestimage.py`` becomes a
scratch base (``kind = "scratch"``), built once with imagekit into a template store and exported
to a standalone qcow2, so both tools start from the same disk. A first step built on it in the
template store records the base's inspection there (as any earlier step on a base does). The
same 10 operations are then applied by each tool:

1. cold: ``cp BASE COPY && virt-customize -a COPY --hostname ... (10 operations)`` versus
   ``python -m imagekit build RECIPE --store S --json`` where S already holds the base (a copy
   of the template store) and the step is not built yet. Both are one appliance launch; the runs
   are interleaved and the order rotates, so both see the same noise. A reference runs the same
   build on a store that never inspected the base (the first step ever built on it).
2. multi-step: the same 10 operations as 5 uncached steps of 2 (5 layers, one launch) against
   the 1-step build of the same run.
3. warm: the same build again on a store holding every layer (no launch), as a whole process.
4. disk bytes: the step's layer blob against a full copy (virt-customize's output) and against
   what the step changed (``qemu-img map`` of the layer: data clusters of the layer itself).

Then one instrumented build and virt-customize's own timestamps say where the time goes, and one
read-only launch compares what the two tools left in their disks.

Run from the repository: ``.venv/bin/python benchmarks/customize.py [--runs N] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import Figure, log, met, paired_ratio, run, stats, summary_table, terminate
from common import machine as common_machine

REPO = Path(__file__).resolve().parent.parent
COLD_TARGET = 0.35  # imagekit cold / (cp + virt-customize), at most
MULTI_TARGET = 1.5  # 5 uncached steps / 1 step of the same 10 operations, at most
WARM_TARGET = 0.3  # seconds, below
BYTES_TARGET = 1.1  # layer blob bytes / bytes the step changed, below
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchKeyForImagekitBenchmarkOnly0000000000000 bench@host"
)
FIRSTBOOT = "echo first boot > /root/first-boot"
# The same 10 operations for both tools, in imagekit's application order (docs/customize.md),
# which is also the order they are given to virt-customize (it applies them as written).
OPERATIONS: list[tuple[str, str]] = [
    ("hostname", "web1.bench.lan"),
    ("timezone", "Europe/Berlin"),
    ("delete", "/opt/old"),
    ("mkdir", "/srv/app/data"),
    ("write", "/etc/motd:Built by the customize benchmark."),
    ("append_line", "/etc/hosts:10.0.0.1 web1.bench.lan web1"),
    ("link", "/srv/app:/opt/app"),
    ("chmod", "0700:/srv/app/data"),
    ("ssh_inject", f"root:string:{SSH_KEY}"),
    ("firstboot_command", FIRSTBOOT),
]
SCALAR = {"hostname", "timezone"}  # TOML strings; the others are lists
SOURCE = """\
[source]
kind = "scratch"
content = "rootfs"
size = "256M"
filesystem = "ext4"
label = "root"
"""


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of printable ASCII is a TOML basic string


def step_table(steps: int = 1) -> str:
    """The 10 operations as ``steps`` consecutive steps (1: one step of 10; 5: five of 2)."""
    per_step = len(OPERATIONS) // steps
    lines = []
    for i, (name, value) in enumerate(OPERATIONS):
        if i % per_step == 0:
            lines.append("[[customize]]")
        text = _toml_string(value)
        lines.append(f"{name} = {text}" if name in SCALAR else f"{name} = [{text}]")
    return "\n".join(lines) + "\n"


PRIMER = '[[customize]]\ntouch = ["/primer"]\n'  # a first step: records the base's inspection


def virt_customize_args() -> list[str]:
    args: list[str] = []
    for name, value in OPERATIONS:
        args += ["--" + name.replace("_", "-"), value]
    return args


# --- running things --------------------------------------------------------------------------


def _version(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    lines = done.stdout.strip().splitlines()
    return lines[0] if lines else "?"


def allocated(path: Path) -> int:
    """Bytes the file occupies on disk (``du``): st_blocks * 512."""
    return path.stat().st_blocks * 512


@dataclass(frozen=True)
class LayerMap:
    data: int  # bytes of guest data clusters stored in the layer itself (depth 0)
    zero: int  # bytes the layer marks as zero without storing data (depth 0)
    cluster: int


def layer_map(layer: Path, env: dict[str, str]) -> LayerMap:
    """What a qcow2 overlay holds of its own: ``qemu-img map`` entries at depth 0."""
    out = run(["qemu-img", "map", "-f", "qcow2", "--output=json", str(layer)], env, 120).stdout
    entries = json.loads(out)
    data = sum(e["length"] for e in entries if e["depth"] == 0 and e["data"])
    zero = sum(e["length"] for e in entries if e["depth"] == 0 and e["zero"] and not e["data"])
    info = json.loads(
        run(["qemu-img", "info", "-f", "qcow2", "--output=json", str(layer)], env, 120).stdout
    )
    return LayerMap(data, zero, int(info["cluster-size"]))


# --- the profiled build (a child process: --profile-build RECIPE STORE) -----------------------


def profile_build(recipe_path: Path, store_path: Path) -> None:
    """One cold build through the API with timestamps around its stages; JSON on stdout.

    The wrappers replace module attributes in this process only; library code is not changed.
    A stage whose function is missing (renamed) is simply not reported.
    """
    t0 = time.perf_counter()
    marks: list[tuple[str, float]] = []

    def mark(label: str) -> None:
        marks.append((label, time.perf_counter() - t0))

    import guestfs

    import imagekit
    from imagekit import config, customize
    from imagekit.build import layers
    from imagekit.disk import qemu_img
    from imagekit.guest import appliance
    from imagekit.progress import ProgressEvent

    mark("imported")

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if not callable(original):
            return

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark(label + ">")
            try:
                return original(*args, **kwargs)
            finally:
                mark(label + "<")

        setattr(owner, name, wrapper)

    wrap(qemu_img, "create_overlay", "overlay")
    wrap(appliance, "launch", "launch")
    wrap(appliance, "recorded_match", "record")
    wrap(appliance, "mount_os", "mount")
    wrap(customize, "apply_step", "apply")
    wrap(guestfs.GuestFS, "sync", "sync")
    wrap(layers._Session, "_capture", "capture")
    wrap(guestfs.GuestFS, "inspect_os", "inspect_os")
    # The probe's verdict is kept per host boot (every process after the first skips it); kept
    # in the temp dir here, so this breakdown shows what the first process after a boot pays.
    appliance._probe_cache_file = lambda: Path(tempfile.gettempdir()) / "kvm-probe.json"
    ops = {name for name, _ in OPERATIONS}

    def progress(event: ProgressEvent) -> None:
        word = event.message.split(" ", 1)[0]
        if event.stage == "customize" and word in ops:
            mark("op:" + word)

    recipe = imagekit.load_recipe(recipe_path)
    store = imagekit.open_store(store_path)
    mark("recipe")
    if config.accel_choice() == "auto":
        mark("probe>")
        appliance.kvm_probe()  # kept for the process: the launch below reuses the answer
        mark("probe<")
    mark("build>")
    result = store.build(recipe, progress=progress)
    mark("build<")
    if result.layers[-1].cached:
        raise RuntimeError("the profiled build found its step cached; it must be cold")
    print(json.dumps({"marks": marks}))


# An imagekit build as consecutive segments: each runs from the end of the one before to the
# first occurrence of its end mark after that. A missing mark folds its time into the next one.
SEGMENTS: list[tuple[str, str]] = [
    ("import imagekit", "imported"),
    ("load recipe, open store", "recipe"),
    ("KVM probe (auto, not kept)", "probe<"),
    ("base cache hit, step key", "overlay>"),
    ("create overlay (qemu-img)", "overlay<"),
    ("appliance launch", "launch<"),
    ("check the record (UUIDs)", "record<"),
    ("inspect_os", "inspect_os<"),
    ("mount (+ getters if inspected)", "mount<"),
    ("10 operations", "apply<"),
    ("sync (guest + qcow2 flush)", "sync<"),
    ("capture: copy, rebase, commit", "capture<"),
    ("shutdown, manifest + tag", "build<"),
]


def imagekit_stages(marks: list[tuple[str, float]], wall: float) -> dict[str, Any]:
    stages: list[tuple[str, float]] = []
    cursor = 0.0
    for name, end in SEGMENTS:
        t = next((t for label, t in marks if label == end and t >= cursor), None)
        if t is not None:
            stages.append((name, t - cursor))
            cursor = t
    stages.insert(0, ("interpreter start + exit", wall - cursor))
    op_marks = [(label[3:], t) for label, t in marks if label.startswith("op:")]
    applied = next((t for label, t in marks if label == "apply<"), None)
    ops: list[tuple[str, float]] = []
    for i, (name, t) in enumerate(op_marks):
        following = op_marks[i + 1][1] if i + 1 < len(op_marks) else (applied or t)
        ops.append((name, following - t))
    return {"wall_s": wall, "stages": stages, "operations": ops}


_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]\s+(.*)$")


def virt_customize_stages(stdout: str, wall: float) -> dict[str, Any]:
    """virt-customize prints ``[  24.0] Setting the hostname: ...``, seconds since it started."""
    lines = [(float(m[1]), m[2]) for m in map(_STAMP.match, stdout.splitlines()) if m]
    if len(lines) < 3:
        return {"wall_s": wall, "stages": [], "operations": []}
    first, finish = lines[1][0], lines[-1][0]  # lines[0] is "Examining the guest ..."
    ops = [
        (text.split(":", 1)[0], lines[i + 1][0] - t) for i, (t, text) in enumerate(lines[1:-1], 1)
    ]
    stages = [
        ("start, appliance launch, inspect", first),
        ("operations (and a random seed)", finish - first),
        ("finishing off, shutdown, exit", wall - finish),
    ]
    return {"wall_s": wall, "stages": stages, "operations": ops}


# --- comparing the results -------------------------------------------------------------------


def _guest_facts(g: Any) -> dict[str, str]:
    def mode(path: str) -> str:
        return f"{g.statns(path)['st_mode'] & 0o7777:04o}" if g.exists(path) else "missing"

    def cat(path: str) -> str:
        return str(g.cat(path)) if g.is_file(path) else "missing"

    def link(path: str) -> str:
        return str(g.readlink(path)) if g.is_symlink(path) else "not a link"

    scripts = [
        p
        for base in ("/usr/lib/virt-sysprep", "/usr/lib/imagekit/firstboot")
        if g.is_dir(base)
        for p in (f"{base}/{q}" for q in g.find(base))
        if "/scripts/" in p and g.is_file(p) and FIRSTBOOT in g.cat(p)
    ]
    systemd = "/etc/systemd/system"
    units = [
        u
        for u in (g.find(systemd) if g.is_dir(systemd) else [])
        if ".wants/" in u and "firstboot" in u
    ]
    hosts = cat("/etc/hosts").splitlines()
    return {
        "hostname": cat("/etc/hostname").strip(),
        "timezone": link("/etc/localtime"),
        "delete": "gone" if not g.exists("/opt/old") else "still there",
        "mkdir": "directory" if g.is_dir("/srv/app/data") else "missing",
        "write": cat("/etc/motd"),
        "append_line": hosts[-1] if hosts else "",
        "link": link("/opt/app"),
        "chmod": mode("/srv/app/data"),
        "ssh_inject": f"{cat('/root/.ssh/authorized_keys').strip()} "
        f"(.ssh {mode('/root/.ssh')}, file {mode('/root/.ssh/authorized_keys')})",
        "firstboot_command": f"{len(scripts)} script(s) with the command, "
        f"{len(units)} enabled firstboot unit(s)",
    }


def compare_results(vc_disk: Path, ik_layer: Path) -> dict[str, Any]:
    """Mount each result read-only in one launch and read back what every operation did."""
    from imagekit.guest import appliance as guest

    drives = [guest.Drive(vc_disk, "qcow2", readonly=True)]
    drives.append(guest.Drive(ik_layer, "qcow2", readonly=True))
    facts: list[dict[str, str]] = []
    with guest.launched(drives) as g:
        for device in ("/dev/sda1", "/dev/sdb1"):
            g.mount_ro(device, "/")
            facts.append(_guest_facts(g))
            g.umount_all()
    vc, ik = facts
    return {
        name: {"virt_customize": vc[name], "imagekit": ik[name], "same": vc[name] == ik[name]}
        for name in vc
    }


# --- the benchmark ---------------------------------------------------------------------------


class Bench:
    def __init__(self, work: Path, timeout: float, accel: str) -> None:
        self.work = work
        self.timeout = timeout
        self.recipes = work / "recipe"
        self.base_recipe = self.recipes / "base.toml"
        self.step_recipe = self.recipes / "bench.toml"
        self.multi_recipe = self.recipes / "multi.toml"
        self.template = work / "template-store"  # the base, and the primer step on it
        self.fresh_template = work / "fresh-template-store"  # the base only, never inspected
        self.base = work / "base.qcow2"
        tmp = work / "tmp"  # imagekit's and libguestfs' temp files land here and go with work
        tmp.mkdir()
        parent_tmp = os.environ.get("TMPDIR") or "/var/tmp"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("IMAGEKIT_", "LIBGUESTFS_")) and not k.lower().endswith("_proxy")
        }
        self.env["TMPDIR"] = str(tmp)
        # The appliance cache stays where libguestfs keeps it for this user (a benchmark that
        # rebuilt it in the temp dir would time supermin, not customizing).
        self.env["LIBGUESTFS_CACHEDIR"] = os.environ.get("LIBGUESTFS_CACHEDIR", parent_tmp)
        self.env["IMAGEKIT_ACCEL"] = accel
        self.cli = [sys.executable, "-m", "imagekit"]
        self.counter = 0

    def fresh(self, prefix: str) -> Path:
        self.counter += 1
        return self.work / f"{prefix}-{self.counter}"

    def setup(self) -> dict[str, Any]:
        """Guest tree, recipes, template store holding the base, exported base qcow2."""
        sys.path.insert(0, str(REPO))
        from imagekit.guest import appliance as guest
        from tests.guestimage import build_guest_tree

        kvm, why = guest.kvm_probe()
        # virt-customize has no probe: on a host whose /dev/kvm cannot boot a guest it would
        # abort, so it gets TCG whenever imagekit's probe says KVM does not work.
        if not kvm:
            self.env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
        self.recipes.mkdir()
        build_guest_tree(self.recipes / "rootfs")
        head = 'version = "1"\n' + SOURCE
        self.base_recipe.write_text('name = "bench-base"\n' + head)
        self.step_recipe.write_text('name = "bench"\n' + head + "\n" + step_table())
        self.multi_recipe.write_text('name = "multi"\n' + head + "\n" + step_table(5))
        primer = self.recipes / "primer.toml"
        primer.write_text('name = "primer"\n' + head + "\n" + PRIMER)
        log("setup: building the scratch base into a template store (one launch, untimed)")
        done = run(
            [*self.cli, "build", str(self.base_recipe), "--store", str(self.template), "--json"],
            self.env,
            self.timeout,
        )
        base_digest = json.loads(done.stdout)["image"]
        store = self.template
        shutil.copytree(store, self.fresh_template, symlinks=True)
        log("setup: a first step on the base records its inspection (one launch, untimed)")
        run([*self.cli, "build", str(primer), "--store", str(store)], self.env, self.timeout)
        run(
            [*self.cli, "export", "bench-base:1", "-o", str(self.base), "--store", str(store)],
            self.env,
            self.timeout,
        )
        return {
            "kvm": kvm,
            "accel_reason": why,
            "setup_build_s": done.seconds,
            "digest": base_digest,
            "bytes": self.base.stat().st_size,
            "allocated": allocated(self.base),
        }

    def virt_customize(self, smp: int | None) -> dict[str, Any]:
        """``cp BASE COPY && virt-customize -a COPY ...``: the copy counts in, timed apart too."""
        copy = self.fresh("vc") / "disk.qcow2"
        copy.parent.mkdir()
        os.sync()
        cp = run(["cp", str(self.base), str(copy)], self.env, self.timeout)
        command = ["virt-customize", "--format", "qcow2", "-a", str(copy)]
        command += ["--smp", str(smp)] if smp else []
        vc = run([*command, *virt_customize_args()], self.env, self.timeout)
        return {
            "seconds": cp.seconds + vc.seconds,
            "copy_s": cp.seconds,
            "virt_customize_s": vc.seconds,
            "disk": copy,
            "stdout": vc.stdout,
        }

    def cold_store(self, *, inspected: bool = True) -> Path:
        """A store that holds the base (built in setup) and not the step: a template copy.

        ``inspected``: the template where a first step recorded the base's inspection."""
        store = self.fresh("store")
        template = self.template if inspected else self.fresh_template
        shutil.copytree(template, store, symlinks=True)
        return store

    def imagekit_build(
        self, store: Path, *, cold: bool, recipe: Path | None = None, steps: int = 1
    ) -> dict[str, Any]:
        os.sync()
        recipe = recipe or self.step_recipe
        command = [*self.cli, "build", str(recipe), "--store", str(store), "--json"]
        done = run(command, self.env, self.timeout)
        summary = json.loads(done.stdout)
        layers = summary["layers"]
        expect = [True] + [not cold] * steps  # the base is always cached; steps only when warm
        if [layer["cached"] for layer in layers] != expect:
            raise RuntimeError(f"expected layers cached={expect}, got {layers}")
        if not cold and summary.get("cached") is not True:
            raise RuntimeError(f"a warm rebuild wrote a new image: {summary}")
        step = layers[-1]
        return {
            "seconds": done.seconds,
            "step_s": sum(layer["seconds"] for layer in layers[1:]),
            "layer": store / "blobs" / "sha256" / step["digest"].removeprefix("sha256:"),
        }

    def profile(self) -> dict[str, Any]:
        store = self.cold_store()
        os.sync()
        command = [sys.executable, str(Path(__file__).resolve()), "--profile-build"]
        done = run([*command, str(self.step_recipe), str(store)], self.env, self.timeout)
        marks = [(str(label), float(t)) for label, t in json.loads(done.stdout)["marks"]]
        shutil.rmtree(store)
        return imagekit_stages(marks, done.seconds)


def _loadavg() -> float | None:
    with contextlib.suppress(OSError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return None


def machine() -> dict[str, Any]:
    return {
        **common_machine(),
        "virt_customize": _version("virt-customize", "--version"),
        "qemu_img": _version("qemu-img", "--version"),
        "load_start": _loadavg(),
    }


def benchmark(
    work: Path, runs: int, timeout: float, accel: str, reference: bool, breakdown: bool
) -> dict[str, Any]:
    facts = machine()
    bench = Bench(work, timeout, accel)
    base = bench.setup()
    log(f"setup done in {base['setup_build_s']:.1f} s; appliance: {base['accel_reason']}")

    tools = ["imagekit", "virt-customize", "imagekit-5-steps", "imagekit-first-step"]
    tools += ["vc-smp2"] if reference else []
    samples: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    sizes: list[dict[str, int]] = []
    log(f"cold: one 10-operation step, interleaved: {', '.join(tools)} ({runs} each)")
    for i in range(runs):
        shift = i % len(tools)  # rotate the order so no tool always goes first
        for tool in tools[shift:] + tools[:shift]:
            if tool == "imagekit":
                sample = bench.imagekit_build(bench.cold_store(), cold=True)
            elif tool == "imagekit-5-steps":
                store = bench.cold_store()
                sample = bench.imagekit_build(store, cold=True, recipe=bench.multi_recipe, steps=5)
                shutil.rmtree(store)
            elif tool == "imagekit-first-step":
                sample = bench.imagekit_build(bench.cold_store(inspected=False), cold=True)
                shutil.rmtree(sample.pop("layer").parents[2])
            else:
                sample = bench.virt_customize(2 if tool == "vc-smp2" else None)
            samples[tool].append(sample)
        ik, vc = samples["imagekit"][-1], samples["virt-customize"][-1]
        mapped = layer_map(ik["layer"], bench.env)
        sizes.append(
            {
                "layer_bytes": ik["layer"].stat().st_size,
                "layer_allocated": allocated(ik["layer"]),
                "changed_data": mapped.data,
                "changed_zero": mapped.zero,
                "cluster": mapped.cluster,
                "copy_bytes": vc["disk"].stat().st_size,
                "copy_allocated": allocated(vc["disk"]),
            }
        )
        log(
            f"  run {i + 1}/{runs}: "
            + ", ".join(f"{tool} {samples[tool][-1]['seconds']:.1f} s" for tool in tools)
        )

    last_store = samples["imagekit"][-1]["layer"].parents[2]
    log(f"warm: the same build on a store holding every layer ({runs})")
    warm_s = []
    for i in range(runs):
        warm_s.append(bench.imagekit_build(last_store, cold=False)["seconds"])
        log(f"  warm {i + 1}/{runs}: {warm_s[-1]:.3f} s")

    stages: dict[str, Any] = {}
    vc_last = samples["virt-customize"][-1]
    stages["virt_customize"] = virt_customize_stages(vc_last["stdout"], vc_last["virt_customize_s"])
    if breakdown:
        log("where the time goes: one more cold imagekit build, instrumented (one launch)")
        stages["imagekit"] = bench.profile()

    log("checking the results: both disks read back in one read-only launch")
    check = compare_results(vc_last["disk"], samples["imagekit"][-1]["layer"])
    facts["load_end"] = _loadavg()

    ik_s = [s["seconds"] for s in samples["imagekit"]]
    vc_s = [s["seconds"] for s in samples["virt-customize"]]
    multi_s = [s["seconds"] for s in samples["imagekit-5-steps"]]
    first_s = [s["seconds"] for s in samples["imagekit-first-step"]]
    ratio = statistics.median(ik_s) / statistics.median(vc_s)
    paired = paired_ratio(ik_s, vc_s)
    multi_paired = paired_ratio(multi_s, ik_s)
    size = {key: int(statistics.median(s[key] for s in sizes)) for key in sizes[0]}
    bytes_ratio = size["layer_bytes"] / size["changed_data"] if size["changed_data"] else None
    warm_median = statistics.median(warm_s)
    result: dict[str, Any] = {
        "machine": facts,
        "runs": runs,
        "accel": accel,
        "base": base,
        "operations": [f"{name}={value}" for name, value in OPERATIONS],
        "cold": {
            "imagekit": stats(ik_s),
            "imagekit_step_s": stats([s["step_s"] for s in samples["imagekit"]]),
            "virt_customize": stats(vc_s),
            "virt_customize_only": stats(
                [s["virt_customize_s"] for s in samples["virt-customize"]]
            ),
            "copy": stats([s["copy_s"] for s in samples["virt-customize"]]),
            "ratio": ratio,
            "paired_ratio_median": paired,
            "target_ratio": COLD_TARGET,
            "met": paired <= COLD_TARGET,
            "first_step": stats(first_s),
            "first_step_paired_ratio": paired_ratio(first_s, vc_s),
        },
        "multi": {
            "five_steps": stats(multi_s),
            "five_steps_layers_s": stats([s["step_s"] for s in samples["imagekit-5-steps"]]),
            "one_step": stats(ik_s),
            "paired_ratio_median": multi_paired,
            "target_ratio": MULTI_TARGET,
            "met": multi_paired <= MULTI_TARGET,
        },
        "reference": None,
        "warm": {**stats(warm_s), "target_s": WARM_TARGET, "met": warm_median < WARM_TARGET},
        "bytes": {
            **size,
            "runs": sizes,
            "ratio_layer_to_changed": bytes_ratio,
            "ratio_layer_to_copy": size["layer_bytes"] / size["copy_allocated"],
            "target_ratio": BYTES_TARGET,
            "met": bytes_ratio is not None and bytes_ratio < BYTES_TARGET,
        },
        "stages": stages,
        "check": check,
    }
    if reference:
        ref = [s["seconds"] for s in samples["vc-smp2"]]
        result["reference"] = {
            "virt_customize_smp2": stats(ref),
            "ratio": statistics.median(ik_s) / statistics.median(ref),
        }
    return result


# --- the report ------------------------------------------------------------------------------


def _spread(s: dict[str, Any], digits: int = 1) -> str:
    return (
        f"median {s['median_s']:7.{digits}f} s  "
        f"(min {s['min_s']:.{digits}f}, max {s['max_s']:.{digits}f})"
    )


def _stage_lines(title: str, stages: dict[str, Any]) -> list[str]:
    lines = [f"   {title}: {stages['wall_s']:.1f} s, whole process"]
    total = stages["wall_s"]
    for name, seconds in stages["stages"]:
        lines.append(f"     {name:<34} {seconds:6.2f} s  {100 * seconds / total:4.0f}%")
    ops = sorted(stages["operations"], key=lambda op: -op[1])
    if ops:
        shown = ", ".join(f"{name} {seconds:.2f}" for name, seconds in ops[:4])
        lines.append(f"     slowest operations (s): {shown}")
    return lines


def report(r: dict[str, Any]) -> str:
    m, base, cold, warm, b = r["machine"], r["base"], r["cold"], r["warm"], r["bytes"]
    ik, vc, cp = cold["imagekit"], cold["virt_customize"], cold["copy"]
    accel = "KVM" if base["kvm"] else "TCG"
    lines = [
        f"imagekit {m['imagekit']} customize benchmark, {m['date']}",
        f"machine: nproc {m['nproc']}, {m['cpu'] or 'unknown CPU'}, {m['platform']}",
        f"         load average {m['load_start']} at the start, {m['load_end']} at the end",
        f"python:  {m['python']} ({sys.executable})",
        f"tools:   {m['virt_customize']}, {m['qemu_img']}",
        f"appliance: {accel} ({base['accel_reason']}); imagekit runs with "
        f"IMAGEKIT_ACCEL={r['accel']}"
        + (
            "; virt-customize with LIBGUESTFS_BACKEND_SETTINGS=force_tcg" if not base["kvm"] else ""
        ),
        f"base:    scratch ext4, 256 MiB virtual, from tests/guestimage.py's busybox tree; "
        f"exported qcow2 {base['bytes']:,} bytes ({base['allocated']:,} allocated)",
        "step:    " + ", ".join(op.split("=", 1)[0] for op in r["operations"]),
        f"runs:    {r['runs']} per figure, medians of whole processes",
        "",
        "1. cold: the 10-operation step, one launch each",
        "   imagekit = python -m imagekit build RECIPE --store S --json (S holds the base, whose",
        "   inspection a first step recorded; KVM probe verdict kept from earlier this boot)",
        "   virt-customize = cp BASE COPY && virt-customize --format qcow2 -a COPY <10 ops>",
        "   run   imagekit   virt-customize (of which cp)   ratio",
    ]
    for i, (a, v, c) in enumerate(zip(ik["runs_s"], vc["runs_s"], cp["runs_s"], strict=True), 1):
        lines.append(f"   {i:<4}  {a:6.1f} s   {v:6.1f} s  ({c:.3f} s)         {a / v:5.2f}x")
    lines += [
        f"   imagekit        {_spread(ik)}; the step layer alone "
        f"{cold['imagekit_step_s']['median_s']:.1f} s",
        f"   virt-customize  {_spread(vc)}; cp alone median {cp['median_s']:.3f} s",
        f"   median of paired ratios imagekit/virt-customize {cold['paired_ratio_median']:.2f}x "
        f"(ratio of medians {cold['ratio']:.2f}x)  target <= {cold['target_ratio']}x: "
        f"{met(cold['met'])}",
        "   reference, not the target: the first step ever built on the base (inspect_os runs)",
        f"   imagekit, first step  {_spread(cold['first_step'])};  paired ratio to "
        f"virt-customize {cold['first_step_paired_ratio']:.2f}x",
    ]
    ref = r["reference"]
    if ref is not None:
        s = ref["virt_customize_smp2"]
        lines += [
            "   reference, not the target: imagekit gives the appliance 2 vCPUs, virt-customize 1",
            f"   virt-customize --smp 2  {_spread(s)};  imagekit/that {ref['ratio']:.2f}x",
        ]
    multi = r["multi"]
    lines += [
        "",
        "2. multi-step: the same 10 operations as 5 uncached steps of 2 (5 layers, one launch)",
        f"   imagekit, 5 steps  {_spread(multi['five_steps'])}; the 5 layers alone "
        f"{multi['five_steps_layers_s']['median_s']:.1f} s",
        f"   imagekit, 1 step   {_spread(multi['one_step'])}",
        f"   median of paired ratios 5 steps / 1 step {multi['paired_ratio_median']:.2f}x  "
        f"target <= {multi['target_ratio']}x: {met(multi['met'])}",
        "",
        f"3. warm rebuild (every layer cached, no launch), whole process  {_spread(warm, 3)}  "
        f"target < {warm['target_s']} s: {met(warm['met'])}",
        "",
        "4. disk bytes for the step (medians over the cold runs)",
        f"   imagekit step layer blob      {b['layer_bytes']:>12,} bytes "
        f"({b['layer_allocated']:,} allocated)",
        f"   what the step changed         {b['changed_data']:>12,} bytes of data "
        f"({b['changed_data'] // b['cluster']} clusters of {b['cluster'] // 1024} KiB; "
        f"+{b['changed_zero']:,} bytes marked zero, no data)",
        f"   full copy (virt-customize)    {b['copy_bytes']:>12,} bytes "
        f"({b['copy_allocated']:,} allocated)",
        f"   qcow2 metadata in the layer   {b['layer_bytes'] - b['changed_data']:>12,} bytes "
        f"({(b['layer_bytes'] - b['changed_data']) // b['cluster']} clusters: header, L1, L2, "
        "refcounts)",
    ]
    ratio_text = (
        f"{b['ratio_layer_to_changed']:.2f}x" if b["ratio_layer_to_changed"] is not None else "n/a"
    )
    lines += [
        f"   layer/changed {ratio_text}  target < {b['target_ratio']}x: {met(b['met'])};  "
        f"layer/full copy (allocated) {b['ratio_layer_to_copy']:.2f}x",
        "",
        "5. where the time goes (one run each)",
    ]
    if "imagekit" in r["stages"]:
        lines += _stage_lines(
            "imagekit build, instrumented (API in a child process)", r["stages"]["imagekit"]
        )
    lines += _stage_lines(
        "virt-customize (its own timestamps, last cold run)", r["stages"]["virt_customize"]
    )
    same = sum(1 for c in r["check"].values() if c["same"])
    lines += ["", f"6. results read back from both disks: {same}/{len(r['check'])} identical"]
    for name, c in r["check"].items():
        if c["same"]:
            lines.append(f"   {name:<18} same: {c['imagekit'][:70]!r}")
        else:
            lines.append(f"   {name:<18} virt-customize {c['virt_customize'][:60]!r}")
            lines.append(f"   {'':<18} imagekit       {c['imagekit'][:60]!r}")
    lines += ["", summary_table(figures(r))]
    return "\n".join(lines)


def figures(r: dict[str, Any]) -> list[Figure]:
    """The summary rows: each target judged on the median of paired ratios of this run."""
    cold, multi, warm, b = r["cold"], r["multi"], r["warm"], r["bytes"]
    rows = [
        Figure(
            "cold 10-op step",
            cold["imagekit"]["median_s"],
            "cp + virt-customize",
            cold["virt_customize"]["median_s"],
            cold["paired_ratio_median"],
            f"<= {COLD_TARGET}x",
            cold["met"],
        ),
        Figure(
            "5 uncached steps",
            multi["five_steps"]["median_s"],
            "1 step, same 10 ops",
            multi["one_step"]["median_s"],
            multi["paired_ratio_median"],
            f"<= {MULTI_TARGET}x",
            multi["met"],
        ),
        Figure(
            "warm build, 0 launches",
            warm["median_s"],
            "",
            None,
            None,
            f"< {WARM_TARGET} s",
            warm["met"],
        ),
    ]
    if b["ratio_layer_to_changed"] is not None:
        rows.append(
            Figure(
                "step layer bytes (not s)",
                b["layer_bytes"] / 1e6,
                "bytes changed (MB)",
                b["changed_data"] / 1e6,
                b["ratio_layer_to_changed"],
                f"< {BYTES_TARGET}x",
                b["met"],
            )
        )
    return rows


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


@contextlib.contextmanager
def workdir(parent: Path | None) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="ikc-", dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds any one run may take (default 600)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where the temp dir goes (default: $TMPDIR)"
    )
    parser.add_argument(
        "--accel",
        choices=["auto", "tcg", "kvm"],
        default="auto",
        help="IMAGEKIT_ACCEL for imagekit (default auto: what users get, probe included)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the virt-customize --smp 2 reference runs",
    )
    parser.add_argument(
        "--no-breakdown",
        action="store_true",
        help="skip the instrumented imagekit build that splits its time into stages",
    )
    parser.add_argument("--profile-build", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_build is not None:
        sys.path.insert(0, str(REPO))
        profile_build(*args.profile_build)
        return 0
    if args.runs < 1 or args.timeout <= 0:
        parser.error("--runs and --timeout must be positive")
    if importlib.util.find_spec("imagekit") is None:
        parser.error(f"imagekit is not importable by {sys.executable}: run with .venv/bin/python")
    for tool in ("virt-customize", "qemu-img", "cp"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    if not Path("/bin/busybox").exists():
        parser.error("/bin/busybox is needed for the guest tree (tests/guestimage.py)")

    signal.signal(signal.SIGTERM, terminate)
    with workdir(args.work_dir) as work:
        results = benchmark(
            work, args.runs, args.timeout, args.accel, not args.no_reference, not args.no_breakdown
        )
        text = report(results)  # before the temp dir goes: nothing in it is read, but be safe
    if args.json:
        print(json.dumps(_jsonable(results), indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark ``imagekit push`` and ``imagekit pull oci://`` against curl and skopeo.

A qcow2 of incompressible random data (``--size-mb``, default 300 MiB) is stored in a source
store, and Debian's docker-registry 2.8 runs on 127.0.0.1 with filesystem storage in the work
directory (the test suite's registry, ``tests/registry.py``). Each figure is the median of
``--runs`` whole-process runs, the tools interleaved run by run (the order rotating) so they
share the machine's noise, with ``os.sync()`` before each:

push, each run into an empty registry of its own, on a new port (so nothing is skipped, and
neither skopeo's blob info cache nor imagekit's mount hints can mount the layer instead):
  imagekit  ``python -m imagekit push bench:1 oci://HOST/bench/image:1 --json``
  curl      the blob alone through the registry API: POST an upload, PUT the file with
            ``?digest=`` (``curl -T``), as a shell would
  skopeo    ``skopeo copy oci:STORE:bench:1 docker://HOST/bench/image:1``
pull, each run into a fresh, empty destination:
  imagekit  ``python -m imagekit pull oci://HOST/bench/image:1 --json`` (digest-checked, header
            inspected, fsynced, committed, tagged)
  curl      ``curl -o FILE`` of the layer's blob URL (no hashing, no fsync: a lower bound)
  skopeo    ``skopeo copy docker://HOST/bench/image:1 oci:DIR:bench``
  and two limits, both printed in the same run:
  curl|openssl       ``curl URL | openssl dgst -sha256`` (moving and hashing, no disk)
  curl|tee|openssl   ``curl URL | tee FILE | openssl dgst -sha256; sync FILE`` (what imagekit
                     does: moves, hashes, writes durably)
  and ``imagekit cached``, a pull of the same reference into a store that has it (start-up, the
  manifest and signature requests: a pull's fixed cost), so that pull minus cached pull, run by
  run, says how the moving of the bytes alone compares with the durable limit.

Peak RSS is each command's own (with its children), from GNU time's ``%M``. Every ratio is the
median of the per-run ratios (``common.paired_ratio``): runs that shared the machine's noise
are compared. Targets: imagekit within 1.2x of curl, faster than skopeo, peak RSS below 100 MB.

Run from the repository: ``.venv/bin/python benchmarks/oci.py [--runs N] [--size-mb M] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import Figure, log, machine, paired_ratio, stats, summary_table, terminate

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imagekit.core.digest import hexpart  # noqa: E402
from tests.registry import registry_environment, running_registry  # noqa: E402

CURL_TARGET = 1.2  # imagekit / curl, at most
RSS_TARGET_MB = 100
CHUNK = 4 << 20
TOOLS = ("imagekit", "curl", "skopeo")
HASHED = "curl|openssl"  # pull only: moving and hashing the bytes, no disk
DURABLE = "curl|tee|openssl"  # pull only: moving, hashing and writing durably, as imagekit does
LIMITS = (HASHED, DURABLE)
CACHED = "imagekit cached"  # pull only: a pull with nothing to fetch, the fixed cost of one
TIME = "/usr/bin/time"  # GNU time: the peak RSS of exactly the command


@dataclass(frozen=True)
class Sample:
    seconds: float
    rss_mb: float


@dataclass(frozen=True)
class Setup:
    work: Path
    store: Path  # the source store, holding bench:1
    layer: Path  # the disk layer's blob file in it
    digest: str  # its sha256
    size: int
    host: str


def make_image(work: Path, size_mb: int) -> Setup:
    """A random-data qcow2 imported into a fresh store as bench:1."""
    raw, image = work / "disk.raw", work / "disk.qcow2"
    with raw.open("wb") as f:
        for _ in range(0, size_mb << 20, CHUNK):
            f.write(os.urandom(CHUNK))
        f.truncate(size_mb << 20)
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True
    )
    raw.unlink()
    from imagekit.store import Store

    store = Store(work / "source")
    pulled = store.import_file(image, "bench:1")
    image.unlink()
    return Setup(work, store.root, pulled.path, pulled.disk_digest, pulled.disk.size, "")


class Runner:
    """Runs each measured command as a whole process, timed, with its peak RSS."""

    def __init__(self, setup: Setup, timeout: float) -> None:
        self.setup = setup
        self.timeout = timeout
        tmp = setup.work / "tmp"
        tmp.mkdir(exist_ok=True)
        self.env = {
            k: v
            for k, v in registry_environment().items()
            if not k.startswith("IMAGEKIT_") and not k.lower().endswith("_proxy")
        }
        self.env |= {"TMPDIR": str(tmp), "HOME": str(tmp)}  # no one's credentials or policy
        # Byte-code as an installed package has it: compiled once (in the warm-up), then cached.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.cli = [sys.executable, "-m", "imagekit"]

    def measure(self, command: Sequence[str]) -> tuple[Sample, str]:
        """Run ``command`` under GNU time: wall time, peak RSS (``%M``, KiB) and its stdout.

        GNU time forks a small process to exec the command, so the peak is the command's own;
        ``wait4`` on a child of this (large) Python process would count its pages as well.
        """
        rss = self.setup.work / "rss.txt"
        start = time.perf_counter()
        done = subprocess.run(
            [TIME, "-f", "%M", "-o", str(rss), *command],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=self.timeout,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n"
                + done.stderr.decode(errors="replace")
            )
        peak_kib = int(rss.read_text().split()[-1])
        return Sample(elapsed, peak_kib / 1024), done.stdout.decode()

    # --- push ---------------------------------------------------------------------------

    def push(self, tool: str, run: int) -> Sample:
        """One push into a registry of its own: empty, on a port no cache has seen (skopeo's
        blob info cache and imagekit's mount hints would otherwise mount, not send)."""
        directory = self.setup.work / f"push-{tool}-{run}"
        try:
            with running_registry(directory) as registry:
                return self._push(tool, registry.host)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _push(self, tool: str, host: str) -> Sample:
        setup = self.setup
        if tool == "imagekit":
            target = f"oci://{host}/bench/image:1"
            sample, out = self.measure(
                [*self.cli, "push", "bench:1", target, "--store", str(setup.store), "--json"]
            )
            report = json.loads(out)
            if report["mounted"] or report["skipped"] or report["uploaded_bytes"] < setup.size:
                raise RuntimeError(f"imagekit push did not send the layer: {report}")
            return sample
        if tool == "curl":
            script = (
                'loc=$(curl -sS --fail --noproxy "*" -X POST -o /dev/null -D - "$1" '
                "| tr -d '\\r' | sed -n 's/^[Ll]ocation: //p') && "
                'curl -sS --fail --noproxy "*" -X PUT -H "Content-Type: application/octet-stream" '
                '-T "$2" -o /dev/null "$loc&digest=$3"'
            )
            url = f"http://{host}/v2/bench/image/blobs/uploads/"
            args = [url, str(setup.layer), setup.digest]
            return self.measure(["sh", "-c", script, "curl-push", *args])[0]
        source = f"oci:{setup.store}:bench:1"
        dest = f"docker://{host}/bench/image:1"
        return self.measure(["skopeo", "copy", "-q", "--dest-tls-verify=false", source, dest])[0]

    # --- pull ---------------------------------------------------------------------------

    def pull(self, tool: str, run: int) -> Sample:
        host, setup = self.setup.host, self.setup
        dest = setup.work / f"pull-{tool}-{run}"
        try:
            if tool == "imagekit":
                source = f"oci://{host}/bench/image:1"
                sample, out = self.measure(
                    [*self.cli, "pull", source, "--store", str(dest), "--json"]
                )
                if json.loads(out)["image"] != setup.digest or json.loads(out)["cached"]:
                    raise RuntimeError(f"imagekit pull stored something else: {out}")
                return sample
            if tool == CACHED:
                source = f"oci://{host}/bench/image:1"
                store = str(setup.work / "cached-store")  # filled by the warm-up pull
                sample, out = self.measure([*self.cli, "pull", source, "--store", store, "--json"])
                if run >= 0 and not json.loads(out)["cached"]:
                    raise RuntimeError(f"a second imagekit pull fetched again: {out}")
                return sample
            if tool == "curl":
                url = f"http://{host}/v2/bench/image/blobs/{setup.digest}"
                command = ["curl", "-sS", "--fail", "--noproxy", "*", "-o", str(dest), url]
                sample = self.measure(command)[0]
                if dest.stat().st_size != setup.size:
                    raise RuntimeError("curl fetched another size than the layer's")
                return sample
            if tool in LIMITS:
                url = f"http://{host}/v2/bench/image/blobs/{setup.digest}"
                script = 'curl -sS --fail --noproxy "*" "$1" | openssl dgst -sha256 -r'
                if tool == DURABLE:
                    script = (
                        'curl -sS --fail --noproxy "*" "$1" | tee "$2" | openssl dgst -sha256 -r'
                        ' && sync "$2"'
                    )
                sample, out = self.measure(["sh", "-c", script, "curl-pull", url, str(dest)])
                if out.split()[0] != hexpart(setup.digest):
                    raise RuntimeError(f"{tool} saw other bytes than the layer's")
                return sample
            source = f"docker://{host}/bench/image:1"
            command = ["skopeo", "copy", "-q", "--src-tls-verify=false", source, f"oci:{dest}:b"]
            return self.measure(command)[0]
        finally:
            if dest.is_dir():
                shutil.rmtree(dest)
            else:
                dest.unlink(missing_ok=True)


def interleaved(
    label: str, tools: Sequence[str], runs: int, once: Callable[[str, int], Sample]
) -> dict[str, list[Sample]]:
    """Every tool once per run, the order rotating, ``os.sync()`` before each command.

    An untimed round comes first: the first timed command after the setup (which writes and
    deletes hundreds of MB) ran up to twice as long as later runs of it (imagekit's first push
    2.8 s and 2.3 s in two runs, the others 1.2-1.7 s), and the rotation puts imagekit first.
    """
    samples: dict[str, list[Sample]] = {tool: [] for tool in tools}
    for tool in tools:
        os.sync()
        once(tool, -1)
    for i in range(runs):
        shift = i % len(tools)
        for tool in [*tools[shift:], *tools[:shift]]:
            os.sync()
            samples[tool].append(once(tool, i))
        log(
            f"  {label} {i + 1}/{runs}: "
            + ", ".join(f"{t} {samples[t][-1].seconds:.3f} s" for t in tools)
        )
    return samples


def summary(samples: dict[str, list[Sample]], size: int) -> dict[str, Any]:
    """Medians per tool, and imagekit's paired ratio against every other tool of the run."""
    out: dict[str, Any] = {}
    for tool, runs in samples.items():
        seconds = [s.seconds for s in runs]
        median = statistics.median(seconds)
        out[tool] = {
            **stats(seconds),
            "mb_per_s": size / median / 1e6,
            "peak_rss_mb": max(s.rss_mb for s in runs),
        }
    ours = [s.seconds for s in samples["imagekit"]]
    out["ratios"] = {
        tool: paired_ratio(ours, [s.seconds for s in runs])
        for tool, runs in samples.items()
        if tool != "imagekit"
    }
    return out


def benchmark(work: Path, runs: int, size_mb: int, timeout: float) -> dict[str, Any]:
    log(f"making a qcow2 of {size_mb} MiB of random data in a source store")
    setup = make_image(work, size_mb)
    with running_registry(work / "registry") as registry:
        setup = Setup(setup.work, setup.store, setup.layer, setup.digest, setup.size, registry.host)
        runner = Runner(setup, timeout)
        log("warm-up (untimed): one imagekit push, which is also the image every pull reads")
        runner.measure(
            [
                *runner.cli,
                "push",
                "bench:1",
                f"oci://{setup.host}/bench/image:1",
                "--store",
                str(setup.store),
                "--json",
            ]
        )
        log("warm-up (untimed): one imagekit pull, which compiles the modules a pull imports")
        runner.pull("imagekit", -1)
        runner.pull(CACHED, -1)  # the first one fetches: it fills the store the cached runs use
        log(f"push, {runs} runs of each tool, interleaved")
        pushed = interleaved("push", TOOLS, runs, runner.push)
        log(f"pull, {runs} runs of each tool, interleaved")
        pulled = interleaved("pull", [*TOOLS, *LIMITS, CACHED], runs, runner.pull)
    return {
        "machine": machine(),
        "image": {"bytes": setup.size, "data_mib": size_mb},
        "runs": runs,
        "push": summary(pushed, setup.size),
        "pull": summary(pulled, setup.size) | {"transfer_vs_durable": transfer_only(pulled)},
        "targets": {"vs_curl": CURL_TARGET, "rss_mb": RSS_TARGET_MB},
        "figures": [vars(f) for f in figures(pushed, pulled)],
    }


def transfer_only(pulled: dict[str, list[Sample]]) -> dict[str, float]:
    """What a pull costs beyond its fixed part (a cached pull of the same run), against the
    durable limit: how much of the gap is moving the bytes, not starting a process."""
    pairs = zip(pulled["imagekit"], pulled[CACHED], pulled[DURABLE], strict=True)
    moved = [(full.seconds - cached.seconds, limit.seconds) for full, cached, limit in pairs]
    return {
        "median_s": statistics.median(m for m, _ in moved),
        "ratio": statistics.median(m / limit for m, limit in moved),
    }


def figures(pushed: dict[str, list[Sample]], pulled: dict[str, list[Sample]]) -> list[Figure]:
    """The summary rows: imagekit against each baseline of the same run, and its peak RSS."""

    def row(direction: str, samples: dict[str, list[Sample]], tool: str) -> Figure:
        """Within CURL_TARGET of a curl figure; strictly faster than skopeo."""
        ours = [s.seconds for s in samples["imagekit"]]
        theirs = [s.seconds for s in samples[tool]]
        ratio = paired_ratio(ours, theirs)
        if tool == "skopeo":
            target, ok = "< 1x", ratio < 1
        else:
            target, ok = f"<= {CURL_TARGET}x", ratio <= CURL_TARGET
        median = statistics.median(ours)
        return Figure(
            f"{direction} vs {tool}", median, tool, statistics.median(theirs), ratio, target, ok
        )

    rss = max(s.rss_mb for samples in (pushed, pulled) for s in samples["imagekit"])
    return [
        row("push", pushed, "curl"),
        row("push", pushed, "skopeo"),
        row("pull", pulled, "curl"),
        row("pull", pulled, DURABLE),
        row("pull", pulled, "skopeo"),
        Figure(
            "imagekit peak RSS",
            rss,
            "",
            None,
            None,
            f"< {RSS_TARGET_MB} MB",
            rss < RSS_TARGET_MB,
            "MB",
        ),
    ]


def report(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"imagekit {m['imagekit']} oci benchmark, {m['date']}",
        f"machine: nproc {m['nproc']}, {m['cpu'] or 'unknown CPU'}, {m['platform']}",
        f"python:  {m['python']} ({sys.executable})",
        f"image:   one qcow2 layer of {r['image']['bytes']:,} bytes "
        f"({r['image']['data_mib']} MiB random data); registry: docker-registry 2.8 on loopback",
        f"runs:    {r['runs']} per tool and direction, medians; peak RSS: the max over runs; "
        "ratios: imagekit / tool, median of the per-run ratios",
        "",
        "tool              push: median     MB/s  peak RSS  ratio   pull: median     MB/s  "
        "peak RSS  ratio",
    ]
    for tool in [*TOOLS, *LIMITS, CACHED]:
        cells = []
        for direction in ("push", "pull"):
            d = r[direction]
            q = d.get(tool)
            if q is None:
                cells.append(f"{'(pull only)':<38}")
                continue
            ratio = d["ratios"].get(tool)
            cells.append(
                f"{q['median_s']:10.3f} s {q['mb_per_s']:6.0f} {q['peak_rss_mb']:6.1f} MB "
                + (f"{ratio:5.2f}x" if ratio is not None else "     -")
            )
        lines.append(f"{tool:<16} " + "   ".join(cells))
    transfer = r["pull"]["transfer_vs_durable"]
    lines += [
        "",
        f"pull minus a cached pull (start-up, manifest and signature requests), run by run: "
        f"{transfer['median_s']:.3f} s, {transfer['ratio']:.2f}x {DURABLE}",
        "",
        summary_table([Figure(**f) for f in r["figures"]]),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per tool and direction")
    parser.add_argument("--size-mb", type=int, default=300, help="MiB of random data")
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    parser.add_argument("--timeout", type=float, default=300, help="cap on any single run (s)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the temp dir goes")
    args = parser.parse_args(argv)
    for tool in ("qemu-img", "curl", "skopeo", "openssl", TIME):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed (scripts/setup.sh installs it)")
    signal.signal(signal.SIGTERM, terminate)
    work = Path(tempfile.mkdtemp(prefix="imagekit-oci-bench-", dir=args.work_dir))
    try:
        result = benchmark(work, args.runs, args.size_mb, args.timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

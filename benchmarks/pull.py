"""Benchmark ``imagekit pull``: cold pull against ``curl | sha256sum``, warm pull, CLI start.

Everything is made here and served on loopback, so no network is needed: a qcow2 converted from
incompressible random data, a Fedora-style CHECKSUM clearsigned by a throwaway OpenPGP key, and a
recipe pinning that key (the approach of ``scripts/demo.py``). The mirror is Python's
``http.server`` answering with ``sendfile(2)``, in a separate process, so serving costs almost no
CPU and none of it runs inside the measured process.

Figures, each the median of ``--runs`` whole-process runs (fork/exec and interpreter start
included):

1. cold: ``python -m imagekit pull RECIPE --store FRESH --json`` into a new empty store, versus
   ``curl -s URL | sha256sum`` of the same URL, interleaved run by run so both see the same noise.
   The ratio imagekit/curl is what the fetch path costs beyond moving and hashing the bytes.
2. warm: the same pull into a store that already holds the image (a cache hit, no network).
3. start: ``python -m imagekit --help``.

Run from the repository: ``.venv/bin/python benchmarks/pull.py [--runs N] [--size-mb M] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import log, machine, met, stats, terminate

REPO = Path(__file__).resolve().parent.parent
IMAGE = "Bench-Cloud-Base-Generic-1-1.0.x86_64.qcow2"
COLD_TARGET = 1.2  # imagekit / curl|sha256sum, at most
WARM_TARGET = 0.3  # seconds, below
CHUNK = 4 << 20
# A reference, not the target: the same hash through OpenSSL, as Python's hashlib computes it.
# coreutils' sha256sum may not use the CPU's SHA instructions, which makes it the slow stage.
OPENSSL = ("openssl", "dgst", "-sha256", "-r")


# --- the mirror: a separate process serving a directory with sendfile -----------------------


class _SendfileHandler(http.server.SimpleHTTPRequestHandler):
    """Keep-alive, quiet, and the body goes out by sendfile(2): no copying through Python."""

    protocol_version = "HTTP/1.1"

    def copyfile(self, source: Any, outputfile: Any) -> None:
        # wfile is unbuffered (wbufsize 0) and end_headers() has flushed the headers already
        self.connection.sendfile(source)

    def log_message(self, format: str, *args: object) -> None:
        """No access log: the benchmark's output is the figures."""


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed mid-body (timeout, Ctrl-C) is no news: no traceback on stderr."""


def serve(root: Path) -> None:
    """Serve ``root`` on 127.0.0.1 at an ephemeral port; print the port, run until killed."""
    handler = functools.partial(_SendfileHandler, directory=str(root))
    server = _QuietServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


@contextlib.contextmanager
def mirror(root: Path) -> Iterator[str]:
    """Run ``serve(root)`` in a child process; yield its base URL, stop it on the way out."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(root)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"the loopback server did not start (exit code {proc.poll()})")
        yield f"http://127.0.0.1:{int(line)}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# --- fixtures: image, signed CHECKSUM, recipe ------------------------------------------------


@dataclass(frozen=True)
class Published:
    image: Path
    size: int
    sha256: str
    recipe: Path


def _run(*command: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(command, input=stdin, capture_output=True, check=False, timeout=300)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace")
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {detail}")
    return done.stdout


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def publish(work: Path, size_mb: int) -> Published:
    """An incompressible qcow2 of ``size_mb`` MiB of data, signed CHECKSUM, key, recipe."""
    pub, gnupg, recipes = work / "pub", work / "g", work / "recipe"
    pub.mkdir()
    recipes.mkdir()
    gnupg.mkdir(mode=0o700)
    raw, image = work / "disk.raw", pub / IMAGE
    with raw.open("wb") as f:
        for _ in range(0, size_mb << 20, CHUNK):
            f.write(os.urandom(CHUNK))
        f.truncate(size_mb << 20)
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
    raw.unlink()
    size = image.stat().st_size
    if size < size_mb << 20:
        raise RuntimeError(f"{image} is only {size} bytes; expected at least {size_mb} MiB")
    digest = _sha256(image)
    text = f"# {IMAGE}: {size} bytes\nSHA256 ({IMAGE}) = {digest}\n"
    gpg = ("gpg", "--homedir", str(gnupg), "--batch", "--quiet", "--passphrase", "")
    try:
        _run(*gpg, "--quick-gen-key", "imagekit bench <bench@example.invalid>", "ed25519", "sign")
        (pub / "CHECKSUM").write_bytes(_run(*gpg, "--clearsign", stdin=text.encode()))
        (recipes / "bench.asc").write_bytes(_run(*gpg, "--armor", "--export"))
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"],
            capture_output=True,
            check=False,
        )
    return Published(image, size, digest, recipes / "bench.toml")


def write_recipe(published: Published, base: str) -> None:
    published.recipe.write_text(
        'name = "bench"\nversion = "1"\n[source]\nkind = "http"\n'
        f'url = "{base}{IMAGE}"\nchecksum_url = "{base}CHECKSUM"\nkeys = ["bench.asc"]\n'
    )


# --- the measured commands -------------------------------------------------------------------


class Runner:
    """Runs the measured commands with a clean environment and a bounded time each."""

    def __init__(self, work: Path, published: Published, url: str, timeout: float) -> None:
        self.published = published
        self.url = url
        self.timeout = timeout
        tmp = work / "tmp"  # imagekit's own temp dirs (gpgv homes) land here and go with work
        tmp.mkdir()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("IMAGEKIT_") and not k.lower().endswith("_proxy")
        }
        self.env["TMPDIR"] = str(tmp)
        self.cli = [sys.executable, "-m", "imagekit"]

    def _timed(self, command: Sequence[str]) -> tuple[float, bytes]:
        start = time.perf_counter()
        done = subprocess.run(
            command,
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=self.timeout,
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n"
                + done.stderr.decode(errors="replace")
            )
        return elapsed, done.stdout

    def pull(self, store: Path, *, cached: bool) -> float:
        command = [*self.cli, "pull", str(self.published.recipe), "--store", str(store), "--json"]
        elapsed, out = self._timed(command)
        summary = json.loads(out)
        if summary.get("image") != "sha256:" + self.published.sha256:
            raise RuntimeError(f"imagekit stored {summary.get('image')}, not the published image")
        if summary.get("cached") is not cached:
            raise RuntimeError(f"expected cached={cached} from the pull, got {summary}")
        return elapsed

    def help(self) -> float:
        return self._timed([*self.cli, "--help"])[0]

    def curl(self, hasher: Sequence[str] = ("sha256sum",)) -> float:
        """``curl -s URL | HASHER`` as two processes joined by a pipe, like the shell would."""
        start = time.perf_counter()
        curl = subprocess.Popen(
            ["curl", "-sS", "--fail", "--noproxy", "*", self.url],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        summer: subprocess.Popen[bytes] | None = None
        try:
            assert curl.stdout is not None
            try:
                summer = subprocess.Popen(
                    hasher, stdin=curl.stdout, stdout=subprocess.PIPE, env=self.env
                )
            finally:
                curl.stdout.close()
            out, _ = summer.communicate(timeout=self.timeout)
            curl_rc = curl.wait(timeout=self.timeout)
            elapsed = time.perf_counter() - start
        finally:
            for proc in (curl, summer):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if curl_rc != 0 or summer.returncode != 0:
            raise RuntimeError(f"curl ({curl_rc}) | {hasher[0]} ({summer.returncode}) failed")
        if out.split()[0].decode() != self.published.sha256:
            raise RuntimeError(f"curl | {hasher[0]} saw different bytes than were published")
        return elapsed


# --- the benchmark ---------------------------------------------------------------------------


def _settle() -> None:
    """Write back what earlier runs left dirty, so no run pays for its predecessor's I/O."""
    os.sync()


def _timed_runs(label: str, runs: int, once: Callable[[], float]) -> list[float]:
    samples = []
    for i in range(runs):
        samples.append(once())
        log(f"  {label} {i + 1}/{runs}: {samples[-1]:.3f} s")
    return samples


def benchmark(
    work: Path, runs: int, size_mb: int, timeout: float, reference: bool
) -> dict[str, Any]:
    log(f"making a qcow2 of {size_mb} MiB of random data, a signed CHECKSUM and a recipe")
    published = publish(work, size_mb)
    with mirror(published.image.parent) as base:
        write_recipe(published, base)
        runner = Runner(work, published, base + IMAGE, timeout)

        log("warm-up: one cold pull (it also fills the store the warm pulls use), one curl")
        warm_store = work / "warm-store"
        runner.pull(warm_store, cached=False)
        runner.curl()

        tools = ["imagekit", "curl", "openssl"] if reference else ["imagekit", "curl"]
        log(f"cold pulls into fresh stores, interleaved with {', '.join(tools[1:])} ({runs} each)")
        samples: dict[str, list[float]] = {tool: [] for tool in tools}
        for i in range(runs):
            store = work / f"cold-{i}"
            shift = i % len(tools)  # rotate the order so no command always goes first
            for tool in tools[shift:] + tools[:shift]:
                _settle()
                if tool == "imagekit":
                    samples[tool].append(runner.pull(store, cached=False))
                elif tool == "curl":
                    samples[tool].append(runner.curl())
                else:
                    samples[tool].append(runner.curl(OPENSSL))
            shutil.rmtree(store)
            log(
                f"  run {i + 1}/{runs}: "
                + ", ".join(f"{tool} {samples[tool][-1]:.3f} s" for tool in tools)
            )
        _settle()
        imagekit_s, curl_s = samples["imagekit"], samples["curl"]

        log(f"warm pulls (cache hits) ({runs})")
        warm_s = _timed_runs("warm", runs, lambda: runner.pull(warm_store, cached=True))

    log(f"CLI start: python -m imagekit --help ({runs}, after one warm-up)")
    runner.help()
    help_s = _timed_runs("--help", runs, runner.help)

    cold_median = statistics.median(imagekit_s)
    curl_median = statistics.median(curl_s)
    ratio = cold_median / curl_median
    paired = statistics.median(a / b for a, b in zip(imagekit_s, curl_s, strict=True))
    warm_median = statistics.median(warm_s)
    return {
        "machine": machine(),
        "image": {"file": IMAGE, "bytes": published.size, "data_mib": size_mb},
        "runs": runs,
        "cold": {
            "imagekit": stats(imagekit_s),
            "curl_sha256sum": stats(curl_s),
            "imagekit_mb_per_s": published.size / cold_median / 1e6,
            "curl_mb_per_s": published.size / curl_median / 1e6,
            "ratio": ratio,
            "paired_ratio_median": paired,
            "target_ratio": COLD_TARGET,
            "met": ratio <= COLD_TARGET,
        },
        "reference": _reference(published.size, cold_median, samples.get("openssl")),
        "warm": {**stats(warm_s), "target_s": WARM_TARGET, "met": warm_median < WARM_TARGET},
        "help": stats(help_s),
    }


def _reference(size: int, imagekit_median: float, samples: list[float] | None) -> Any:
    """``curl | openssl dgst -sha256``: moving and hashing the bytes with hardware SHA."""
    if not samples:
        return None
    median = statistics.median(samples)
    return {
        "curl_openssl": stats(samples),
        "curl_openssl_mb_per_s": size / median / 1e6,
        "ratio": imagekit_median / median,
    }


def report(r: dict[str, Any]) -> str:
    m, cold, warm, start = r["machine"], r["cold"], r["warm"], r["help"]
    ik, curl = cold["imagekit"], cold["curl_sha256sum"]
    lines = [
        f"imagekit {m['imagekit']} pull benchmark, {m['date']}",
        f"machine: nproc {m['nproc']}, {m['cpu'] or 'unknown CPU'}, {m['platform']}",
        f"python:  {m['python']} ({sys.executable})",
        f"image:   {r['image']['file']}, {r['image']['bytes']:,} bytes "
        f"(qcow2 of {r['image']['data_mib']} MiB random data)",
        f"runs:    {r['runs']} per figure, medians; "
        "mirror: http.server + sendfile(2) in its own process on loopback",
        "",
        "1. cold pull, fresh store, whole process  vs  curl -s URL | sha256sum",
        "   run   imagekit   curl|sha256sum   ratio",
    ]
    for i, (a, b) in enumerate(zip(ik["runs_s"], curl["runs_s"], strict=True), 1):
        lines.append(f"   {i:<4}  {a:7.3f} s  {b:9.3f} s     {a / b:5.2f}x")
    lines += [
        f"   imagekit        median {ik['median_s']:7.3f} s  (min {ik['min_s']:.3f}, "
        f"max {ik['max_s']:.3f})  {cold['imagekit_mb_per_s']:.0f} MB/s",
        f"   curl|sha256sum  median {curl['median_s']:7.3f} s  (min {curl['min_s']:.3f}, "
        f"max {curl['max_s']:.3f})  {cold['curl_mb_per_s']:.0f} MB/s",
        f"   ratio imagekit/curl  {cold['ratio']:.2f}x  (median of paired ratios "
        f"{cold['paired_ratio_median']:.2f}x)  target <= {cold['target_ratio']}x: "
        f"{met(cold['met'])}",
    ]
    ref = r["reference"]
    if ref is not None:
        o = ref["curl_openssl"]
        lines += [
            "   reference, not the target: the same transfer hashed by OpenSSL (as hashlib does)",
            f"   curl|openssl    median {o['median_s']:7.3f} s  (min {o['min_s']:.3f}, "
            f"max {o['max_s']:.3f})  {ref['curl_openssl_mb_per_s']:.0f} MB/s;  "
            f"imagekit/that {ref['ratio']:.2f}x",
        ]
    lines += [
        "",
        f"2. warm pull (cache hit, no network)  median {warm['median_s']:.3f} s  "
        f"(min {warm['min_s']:.3f}, max {warm['max_s']:.3f})  target < {warm['target_s']} s: "
        f"{met(warm['met'])}",
        "",
        f"3. CLI start (python -m imagekit --help)  median {start['median_s']:.3f} s  "
        f"(min {start['min_s']:.3f}, max {start['max_s']:.3f})",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument(
        "--size-mb", type=int, default=300, help="MiB of random data in the image (default 300)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--timeout", type=float, default=120, help="seconds any one run may take (default 120)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where the temp dir goes (default: $TMPDIR)"
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the curl | openssl dgst reference (run by default when openssl exists)",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the mirror's own process
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    if args.runs < 1 or args.size_mb < 1 or args.timeout <= 0:
        parser.error("--runs, --size-mb and --timeout must be positive")
    if importlib.util.find_spec("imagekit") is None:
        parser.error(f"imagekit is not importable by {sys.executable}: run with .venv/bin/python")
    for tool in ("qemu-img", "gpg", "gpgconf", "gpgv", "curl", "sha256sum"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")

    signal.signal(signal.SIGTERM, terminate)
    work = Path(tempfile.mkdtemp(prefix="ikb-", dir=args.work_dir))
    try:
        reference = not args.no_reference and shutil.which("openssl") is not None
        results = benchmark(work, args.runs, args.size_mb, args.timeout, reference)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

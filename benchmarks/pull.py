"""Benchmark ``imagekit pull``: cold pulls against curl, unthrottled and per-connection capped.

Everything is made here and served on loopback, so no network is needed: a qcow2 converted from
incompressible random data, a Fedora-style CHECKSUM clearsigned by a throwaway OpenPGP key, and a
recipe pinning that key (the approach of ``scripts/demo.py``). Two mirrors, each Python's
``http.server`` answering single ``Range`` requests with ``sendfile(2)`` in a separate process
(so serving costs little CPU and none of it runs inside the measured process): one at full
speed, one sending each response at ``--rate-mb`` MB/s, as mirrors cap each connection.

Figures, each the median of ``--runs`` whole-process runs (fork/exec and interpreter start
included), each ratio the median of the run-by-run ratios (the runs interleaved, the order
rotating, so paired runs share the machine's noise):

1. unthrottled: ``python -m imagekit pull RECIPE --store FRESH --json`` into a new empty store
   (``connections`` from the benchmark's own config.toml, ``--connections``, default 4) versus
   ``curl URL | sha256sum`` (the target, <= 1.0x), and the two limits the issue names:
   ``curl | openssl dgst -sha256`` (moving and hashing the bytes, no disk) and
   ``curl | tee FILE | openssl dgst -sha256 && sync FILE`` (what imagekit also does: write the
   file and make it durable).
2. throttled: the same against the capped mirror versus ``curl | sha256sum`` (target <= 0.5x).
   The peak RSS of every cold pull (wait4's ru_maxrss) must stay under 100 MB.
3. warm: the same pull into a store that already holds the image (a cache hit, no network).
4. start: ``python -m imagekit --help``.

It ends with the summary table of benchmarks/common.py.

Run from the repository: ``.venv/bin/python benchmarks/pull.py [--runs N] [--size-mb M]
[--rate-mb R] [--connections N] [--json]``.
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
import re
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

from common import Figure, log, machine, met, paired_ratio, stats, summary_table, terminate

REPO = Path(__file__).resolve().parent.parent
IMAGE = "Bench-Cloud-Base-Generic-1-1.0.x86_64.qcow2"
COLD_TARGET = 1.0  # imagekit / curl|sha256sum unthrottled, at most
THROTTLED_TARGET = 0.5  # imagekit / curl|sha256sum with each connection capped, at most
WARM_TARGET = 0.3  # seconds, below
RSS_TARGET_MB = 100  # the pull process's peak resident set, below
CHUNK = 4 << 20
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
# A reference, not the target: the same hash through OpenSSL, as Python's hashlib computes it.
# coreutils' sha256sum may not use the CPU's SHA instructions, which makes it the slow stage.
OPENSSL = ("openssl", "dgst", "-sha256", "-r")


# --- the mirror: a separate process serving a directory with sendfile -----------------------


class _SendfileHandler(http.server.SimpleHTTPRequestHandler):
    """Keep-alive, quiet, single ``Range`` requests, and bodies sent by sendfile(2).

    ``rate`` (bytes/s, None: unlimited) caps each response, the way mirrors cap a connection.
    """

    protocol_version = "HTTP/1.1"
    rate: float | None = None

    def do_GET(self) -> None:
        try:
            f = open(self.translate_path(self.path), "rb")  # noqa: SIM115 (closed below)
        except OSError:
            self.send_error(404)
            return
        with f:
            st = os.fstat(f.fileno())
            etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
            start, end = 0, st.st_size - 1
            wanted = _RANGE.fullmatch(self.headers.get("Range", ""))
            if_range = self.headers.get("If-Range")
            if wanted and int(wanted[1]) < st.st_size and if_range in (None, etag):
                start = int(wanted[1])
                end = min(int(wanted[2]), end) if wanted[2] else end
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{st.st_size}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            self._send(f.fileno(), start, end - start + 1)

    def _send(self, fd: int, offset: int, count: int) -> None:
        """sendfile(2) in one go, or in paced blocks when a rate is set."""
        began, sent = time.monotonic(), 0
        block = count if self.rate is None else 256 << 10
        try:
            while sent < count:
                n = os.sendfile(
                    self.connection.fileno(), fd, offset + sent, min(block, count - sent)
                )
                if n == 0:
                    break
                sent += n
                if self.rate is not None:
                    delay = began + sent / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
        except OSError:  # the client went away (a closed probe, a timeout)
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """No access log: the benchmark's output is the figures."""


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed mid-body (timeout, Ctrl-C) is no news: no traceback on stderr."""


def serve(root: Path, rate: float | None) -> None:
    """Serve ``root`` on 127.0.0.1 at an ephemeral port; print the port, run until killed."""

    class Handler(_SendfileHandler):
        pass

    Handler.rate = rate
    handler = functools.partial(Handler, directory=str(root))
    server = _QuietServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


@contextlib.contextmanager
def mirror(root: Path, rate: float | None = None) -> Iterator[str]:
    """Run ``serve(root, rate)`` in a child process; yield its base URL, stop it on the way out."""
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(root)]
    if rate is not None:
        command += ["--serve-rate", str(rate)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
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


def write_recipe(published: Published, base: str, recipe: Path) -> None:
    recipe.write_text(
        'name = "bench"\nversion = "1"\n[source]\nkind = "http"\n'
        f'url = "{base}{IMAGE}"\nchecksum_url = "{base}CHECKSUM"\nkeys = ["bench.asc"]\n'
    )


# --- the measured commands -------------------------------------------------------------------


# The baselines, as a shell runs them (pipefail: a failed curl fails the run). sha256sum is the
# issue's baseline; openssl hashes with the CPU's SHA instructions as hashlib does, so "no disk"
# is the floor of moving and hashing the bytes, and "tee + sync" adds what imagekit also does:
# write the file and make it durable.
PIPELINES = {
    "curl|sha256sum": "curl -sS --fail --noproxy '*' \"$URL\" | sha256sum",
    "curl|openssl": f"curl -sS --fail --noproxy '*' \"$URL\" | {' '.join(OPENSSL)}",
    "curl|tee|openssl+sync": (
        f'curl -sS --fail --noproxy \'*\' "$URL" | tee "$FILE" | {" ".join(OPENSSL)}'
        ' && sync "$FILE"'
    ),
}


@dataclass(frozen=True)
class Pulled:
    seconds: float
    max_rss: int  # bytes: the pull process's peak resident set


class Runner:
    """Runs the measured commands with a clean environment and a bounded time each."""

    def __init__(self, work: Path, published: Published, timeout: float, connections: int) -> None:
        self.published = published
        self.work = work
        self.timeout = timeout
        tmp = work / "tmp"  # imagekit's own temp dirs (gpgv homes) land here and go with work
        tmp.mkdir()
        config = work / "config"  # the benchmark's own config.toml, not the user's
        (config / "imagekit").mkdir(parents=True)
        (config / "imagekit" / "config.toml").write_text(f"connections = {connections}\n")
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("IMAGEKIT_") and not k.lower().endswith("_proxy")
        }
        self.env["TMPDIR"] = str(tmp)
        self.env["XDG_CONFIG_HOME"] = str(config)
        self.cli = [sys.executable, "-m", "imagekit"]

    def _timed(self, command: Sequence[str]) -> tuple[float, bytes, int]:
        """Seconds, stdout and peak RSS (bytes) of one process, read by wait4(2)."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
            deadline = start + self.timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    proc.kill()
                    proc.wait()
                    raise RuntimeError(f"{' '.join(command)} took over {self.timeout} s")
                time.sleep(0.002)
            elapsed = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(command)} failed ({proc.returncode}):\n"
                    + err.read().decode(errors="replace")[-4000:]
                )
            return elapsed, out.read(), usage.ru_maxrss * 1024

    def pull(self, recipe: Path, store: Path, *, cached: bool) -> Pulled:
        command = [*self.cli, "pull", str(recipe), "--store", str(store), "--json"]
        elapsed, out, rss = self._timed(command)
        summary = json.loads(out)
        if summary.get("image") != "sha256:" + self.published.sha256:
            raise RuntimeError(f"imagekit stored {summary.get('image')}, not the published image")
        if summary.get("cached") is not cached:
            raise RuntimeError(f"expected cached={cached} from the pull, got {summary}")
        return Pulled(elapsed, rss)

    def help(self) -> float:
        return self._timed([*self.cli, "--help"])[0]

    def curl(self, url: str, pipeline: str) -> float:
        """One of PIPELINES against ``url``; the hash it prints must be the published one."""
        file = self.work / "tee.out"
        env = {**self.env, "URL": url, "FILE": str(file)}
        start = time.perf_counter()
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", PIPELINES[pipeline]],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=self.timeout,
        )
        elapsed = time.perf_counter() - start
        file.unlink(missing_ok=True)
        if done.returncode != 0:
            raise RuntimeError(f"{pipeline} failed ({done.returncode}): {done.stderr!r}")
        if done.stdout.split()[0].decode() != self.published.sha256:
            raise RuntimeError(f"{pipeline} saw different bytes than were published")
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


def _cold_case(
    runner: Runner,
    work: Path,
    label: str,
    recipe: Path,
    url: str,
    baselines: Sequence[str],
    runs: int,
) -> dict[str, Any]:
    """Cold pulls into fresh stores interleaved with ``baselines``, the order rotating per run."""
    tools = ["imagekit", *baselines]
    log(f"{label}: cold pulls interleaved with {', '.join(baselines)} ({runs} each)")
    samples: dict[str, list[float]] = {tool: [] for tool in tools}
    rss: list[int] = []
    for i in range(runs):
        store = work / f"cold-{label}-{i}"
        shift = i % len(tools)  # rotate the order so no command always goes first
        for tool in tools[shift:] + tools[:shift]:
            _settle()
            if tool == "imagekit":
                pulled = runner.pull(recipe, store, cached=False)
                samples[tool].append(pulled.seconds)
                rss.append(pulled.max_rss)
            else:
                samples[tool].append(runner.curl(url, tool))
        shutil.rmtree(store)
        log(f"  run {i + 1}/{runs}: " + ", ".join(f"{t} {samples[t][-1]:.3f} s" for t in tools))
    _settle()
    size = runner.published.size
    return {
        "times": {tool: stats(values) for tool, values in samples.items()},
        "mb_per_s": {tool: size / statistics.median(v) / 1e6 for tool, v in samples.items()},
        "paired_ratio": {
            tool: paired_ratio(samples["imagekit"], samples[tool]) for tool in baselines
        },
        "max_rss_bytes": max(rss),
    }


def benchmark(
    work: Path,
    runs: int,
    size_mb: int,
    timeout: float,
    *,
    reference: bool,
    rate: float,
    connections: int,
) -> dict[str, Any]:
    log(f"making a qcow2 of {size_mb} MiB of random data, a signed CHECKSUM and a recipe")
    published = publish(work, size_mb)
    runner = Runner(work, published, timeout, connections)
    fast_recipe, slow_recipe = published.recipe, published.recipe.with_name("bench-slow.toml")
    with mirror(published.image.parent) as fast, mirror(published.image.parent, rate) as slow:
        write_recipe(published, fast, fast_recipe)
        write_recipe(published, slow, slow_recipe)
        log("warm-up: one cold pull (it also fills the store the warm pulls use), one curl")
        warm_store = work / "warm-store"
        runner.pull(fast_recipe, warm_store, cached=False)
        runner.curl(fast + IMAGE, "curl|sha256sum")

        references = ["curl|openssl", "curl|tee|openssl+sync"] if reference else []
        unthrottled = _cold_case(
            runner,
            work,
            "unthrottled",
            fast_recipe,
            fast + IMAGE,
            ["curl|sha256sum", *references],
            runs,
        )
        throttled = _cold_case(
            runner, work, "throttled", slow_recipe, slow + IMAGE, ["curl|sha256sum"], runs
        )
        log(f"warm pulls (cache hits) ({runs})")
        warm_s = _timed_runs(
            "warm", runs, lambda: runner.pull(fast_recipe, warm_store, cached=True).seconds
        )

    log(f"CLI start: python -m imagekit --help ({runs}, after one warm-up)")
    runner.help()
    help_s = _timed_runs("--help", runs, runner.help)
    return {
        "machine": machine(),
        "image": {"file": IMAGE, "bytes": published.size, "data_mib": size_mb},
        "runs": runs,
        "connections": connections,
        "rate_bytes_per_s": rate,
        "unthrottled": unthrottled,
        "throttled": throttled,
        "warm": stats(warm_s),
        "help": stats(help_s),
    }


def figures(r: dict[str, Any]) -> list[Figure]:
    """The summary rows: each target, and the references the issue asks to print."""
    rows = []
    rate = f"{r['rate_bytes_per_s'] / 1e6:.0f} MB/s per connection"
    cases = [
        ("unthrottled", "cold pull", {"curl|sha256sum": (COLD_TARGET, True)}),
        ("throttled", f"cold pull, server {rate}", {"curl|sha256sum": (THROTTLED_TARGET, True)}),
    ]
    for key, name, targets in cases:
        case = r[key]
        ik = case["times"]["imagekit"]["median_s"]
        for baseline, ratio in case["paired_ratio"].items():
            limit, judged = targets.get(baseline, (None, False))
            rows.append(
                Figure(
                    name=f"{name} ({r['connections']} connections)",
                    median_s=ik,
                    baseline=baseline,
                    baseline_s=case["times"][baseline]["median_s"],
                    ratio=ratio,
                    target=f"<= {limit}x" if judged else "reference",
                    ok=ratio <= limit if judged and limit is not None else None,
                )
            )
    warm = r["warm"]["median_s"]
    rows.append(
        Figure(
            "warm pull (cache hit)", warm, "", None, None, f"< {WARM_TARGET} s", warm < WARM_TARGET
        )
    )
    return rows


def report(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"imagekit {m['imagekit']} pull benchmark, {m['date']}",
        f"machine: nproc {m['nproc']}, {m['cpu'] or 'unknown CPU'}, {m['platform']}",
        f"python:  {m['python']} ({sys.executable})",
        f"image:   {r['image']['file']}, {r['image']['bytes']:,} bytes "
        f"(qcow2 of {r['image']['data_mib']} MiB random data)",
        f"runs:    {r['runs']} per figure, medians, ratios = median of paired per-run ratios; "
        f"imagekit with connections = {r['connections']}",
        "mirrors: sendfile(2) servers in their own processes on loopback, one unthrottled, one "
        f"sending each response at {r['rate_bytes_per_s'] / 1e6:.0f} MB/s",
    ]
    for key in ("unthrottled", "throttled"):
        case = r[key]
        tools = list(case["times"])
        lines += ["", f"{key}: " + "  ".join(f"{t:>22}" for t in tools)]
        for i in range(r["runs"]):
            cells = "  ".join(f"{case['times'][t]['runs_s'][i]:20.3f} s" for t in tools)
            lines.append(f"   run {i + 1:<3}   {cells}")
        lines.append("   MB/s       " + "  ".join(f"{case['mb_per_s'][t]:20.0f}  " for t in tools))
        rss = case["max_rss_bytes"] / 1e6
        lines.append(
            f"   imagekit peak RSS {rss:.1f} MB (target < {RSS_TARGET_MB} MB: "
            f"{met(rss < RSS_TARGET_MB)})"
        )
    w, h = r["warm"], r["help"]
    lines += [
        "",
        f"warm pull (cache hit, no network)  median {w['median_s']:.3f} s "
        f"(min {w['min_s']:.3f}, max {w['max_s']:.3f})",
        f"CLI start (python -m imagekit --help)  median {h['median_s']:.3f} s "
        f"(min {h['min_s']:.3f}, max {h['max_s']:.3f})",
        "",
        summary_table(figures(r)),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument(
        "--size-mb", type=int, default=300, help="MiB of random data in the image (default 300)"
    )
    parser.add_argument(
        "--rate-mb",
        type=float,
        default=40,
        help="the throttled mirror's MB/s per response (default 40)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=4,
        help="imagekit's connections setting, in the benchmark's config.toml (default 4)",
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
        help="skip the curl | openssl references (run by default when openssl exists)",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the mirror's own process
    parser.add_argument("--serve-rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.serve_rate)
        return 0
    if args.runs < 1 or args.size_mb < 1 or args.timeout <= 0 or args.rate_mb <= 0:
        parser.error("--runs, --size-mb, --rate-mb and --timeout must be positive")
    if importlib.util.find_spec("imagekit") is None:
        parser.error(f"imagekit is not importable by {sys.executable}: run with .venv/bin/python")
    for tool in ("qemu-img", "gpg", "gpgconf", "gpgv", "curl", "sha256sum", "bash", "tee"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")

    signal.signal(signal.SIGTERM, terminate)
    work = Path(tempfile.mkdtemp(prefix="ikb-", dir=args.work_dir))
    try:
        reference = not args.no_reference and shutil.which("openssl") is not None
        results = benchmark(
            work,
            args.runs,
            args.size_mb,
            args.timeout,
            reference=reference,
            rate=args.rate_mb * 1e6,
            connections=args.connections,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

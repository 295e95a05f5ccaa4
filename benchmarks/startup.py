"""Process start-up of imagekit commands, this tree against a baseline tree, interleaved.

Whole-process figures of short commands are mostly start-up (interpreter, imports, typer
building the command line). Each case runs alternately with this tree's imagekit and with the
baseline's (``--baseline DIR``, default /work/main, put first on PYTHONPATH), so both share the
machine's noise; the verdict is the median of the paired ratios.

Cases: ``--help``; ``images`` and ``inspect`` of a store holding one small image; pull.py's
warm pull (a recipe whose image is stored: a cache hit, no network); a cached registry pull
(the image is there: start-up plus the manifest and signature requests) from the test suite's
registry on 127.0.0.1, the image signed so the signatures are read.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common import REPO, Figure, log, paired_ratio, run, stats, summary_table
from pull import mirror, publish, write_recipe

sys.path.insert(0, str(REPO))
from tests.registry import running_registry

TARGET = 1.0  # this tree must start no slower than the baseline


def environment(tree: Path, home: Path) -> dict[str, str]:
    """A clean environment whose imagekit is ``tree``'s, byte-code caching on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEKIT_", "REGISTRY_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(PYTHONPATH=str(tree), HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return env


def prepare(work: Path, host: str) -> Path:
    """A store with ``bench:1`` (a 1 MiB qcow2), signed and pushed to ``host``."""
    from imagekit.store import Store

    store = Store(work / "store")
    raw = work / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(raw), "1M"], check=True)
    store.import_file(raw, "bench:1")
    keys = store.generate_key(work / "key", passphrase="")
    store.sign("bench:1", keys.private, passphrase="")
    store.push("bench:1", f"oci://{host}/bench/web:1")
    return store.root


def benchmark(runs: int, baseline: Path, work: Path) -> list[Figure]:
    trees = {"this tree": REPO, "baseline": baseline}
    home = work / "home"
    home.mkdir()
    published = publish(work, 1)
    with running_registry(work / "registry") as registry, mirror(published.image.parent) as url:
        store = prepare(work, registry.host)
        write_recipe(published, url, published.recipe)
        pulled = work / "pulled"
        python = [sys.executable, "-P", "-m", "imagekit"]  # -P: PYTHONPATH picks the tree
        cases = {
            "--help": ["--help"],
            "images": ["images", "--store", str(store)],
            "inspect": ["inspect", "--store", str(store), "bench:1"],
            "warm pull (cache hit)": ["pull", "--store", str(work / "warm"), str(published.recipe)],
            "cached registry pull": [
                "pull",
                "--store",
                str(pulled),
                f"oci://{registry.host}/bench/web:1",
            ],
        }
        samples: dict[tuple[str, str], list[float]] = {}
        for tree in trees.values():  # warm-up: compile each tree, fill the pulled stores
            for args in cases.values():
                run([*python, *args], environment(tree, home), 120)
        for i in range(runs):
            log(f"run {i + 1}/{runs}")
            for case, args in cases.items():
                order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
                for label, tree in order:
                    done = run([*python, *args], environment(tree, home), 120)
                    samples.setdefault((case, label), []).append(done.seconds)
    figures = []
    for case in cases:
        mine, base = samples[(case, "this tree")], samples[(case, "baseline")]
        ratio = paired_ratio(mine, base)
        control = case == "--help"  # builds every command in both trees: shows the noise
        target = "control" if control else f"<= {TARGET:.2f}x"
        ok = None if control else ratio <= TARGET
        figures.append(
            Figure(
                case,
                stats(mine)["median_s"],
                "baseline tree",
                stats(base)["median_s"],
                ratio,
                target,
                ok,
            )
        )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per case and tree")
    parser.add_argument("--baseline", type=Path, default=Path("/work/main"), help="other tree")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imagekit-startup-") as work:
        figures = benchmark(args.runs, args.baseline.resolve(), Path(work))
    print(summary_table(figures))
    return 0 if all(f.ok is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Build a folder of recipes: the graph in parallel, unchanged work skipped, results reported.

Each recipe's input key (``Store.input_key``: recipe text, verified upstream identity of its
base, the files it reads, the code version) is compared with the key recorded when it was last
built (in the build cache, ``cache/build/<key>`` -> the manifest made): equal, and its ref
still names that manifest, it is ``unchanged`` and nothing runs. With ``push``, a key whose
signed artifact the registry already holds (tag :func:`key_tag`) is ``published``: another
builder made it tonight. Everything else is built (``Store.build``), recorded, then pushed;
with ``push`` a builder first claims the key in the registry (nightly.claims): a key another
builder holds is deferred, and at the end awaited (``published``) or, its claim expired, built.

Builds run on ``jobs`` threads, each taking its share of memory first (nightly.memory); a
recipe starts once every recipe of the folder it builds on has passed, and is skipped when one
failed. Ctrl-C starts nothing new, waits for the builds running (their appliances share the
terminal's process group and stop with it), and leaves only whole refs behind.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from imagekit.errors import RecipeError
from imagekit.nightly.claims import Claims, builder_id, rotated
from imagekit.nightly.graph import Graph, Node, load_folder
from imagekit.nightly.job import Listener, Runner
from imagekit.nightly.memory import MemoryBudget, available_memory
from imagekit.nightly.options import NightlyOptions
from imagekit.nightly.report import NightlyReport, RecipeResult

if TYPE_CHECKING:
    from imagekit.store import Store


def build_all(
    store: Store,
    directory: Path | str,
    options: NightlyOptions | None = None,
    *,
    listener: Listener | None = None,
) -> NightlyReport:
    """Build every recipe of ``directory`` that changed; the report says what each did.

    RecipeError before anything runs for a cycle or a folder without recipes; every other
    failure is one recipe's, in the report (``report.exit_code``).
    """
    options = options or NightlyOptions()
    if options.jobs < 1:
        raise RecipeError(f"-j {options.jobs}: give 1 or more parallel builds")
    started = time.monotonic()
    graph = load_folder(Path(directory))
    results = {node.path: RecipeResult(node.label, str(node.path)) for node in graph}
    runner = Runner(store, options, MemoryBudget(options.memory or available_memory()), listener)
    runner.results = list(results.values())
    if options.push is not None:
        from imagekit.oci.reference import RegistryRef
        from imagekit.oci.registry import Registry

        ref = RegistryRef.parse(options.push)
        registry = Registry(
            ref.host,
            transport=options.transport,
            insecure=options.insecure,
            repository=ref.repository,
        )
        runner.claims = Claims(registry, ref.repository, builder_id(), lease=options.lease)
    _schedule(graph, results, runner, options.jobs)
    return NightlyReport(
        str(directory), list(results.values()), time.monotonic() - started, options.jobs
    )


def _schedule(graph: Graph, results: dict[Path, RecipeResult], runner: Runner, jobs: int) -> None:
    """Start each recipe once its bases passed, at most ``jobs`` at a time; a recipe another
    builder claimed waits until nothing else can start."""
    pending = list(graph) if runner.claims is None else rotated(list(graph), runner.claims.builder)
    running: dict[Future[bool], Node] = {}
    deferred: list[Node] = []
    ended: set[Path] = set()  # finished, passed or not (a running result's status may change)
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="nightly") as pool:
        try:
            while pending or running or deferred:
                for node in list(pending):
                    bases = [results[base] for base in node.bases if base in ended]
                    blocked = next((b for b in bases if not b.passed), None)
                    if blocked is not None:
                        pending.remove(node)
                        ended.add(node.path)
                        because = blocked.skipped_because or f"{blocked.recipe} failed"
                        runner.skip(results[node.path], because)
                    elif len(bases) == len(node.bases) and len(running) < jobs:
                        pending.remove(node)
                        future = pool.submit(runner.run, node, results[node.path])
                        running[future] = node
                while deferred and len(running) < jobs and (not running or not pending):
                    node = deferred.pop(0)  # nothing else can start: await the other builders
                    running[pool.submit(runner.run, node, results[node.path], True)] = node
                if not running:
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    node = running.pop(future)
                    if future.result():
                        deferred.append(node)
                    else:
                        ended.add(node.path)
        except KeyboardInterrupt:
            runner.cancelled.set()
            for future in running:
                future.cancel()
            raise

"""``python -m imagekit`` run as a user runs it: the one way tests call the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imagekit.store import Store
from tests.conftest import REPO


def imagekit(
    *args: str,
    store: Path | Store | str | None = None,
    env: Mapping[str, str] | None = None,
    config_home: Path | None = None,
    timeout: float = 180,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``imagekit COMMAND [--store STORE] ARGS...`` from the repository, its output captured.

    ``env`` is added to the environment; ``config_home`` (``XDG_CONFIG_HOME``) also drops the
    machine's ``IMAGEKIT_*`` variables, so only that config counts. No stdin unless given.
    """
    command, *rest = args
    where = store.root if isinstance(store, Store) else store
    prefix = [] if where is None else ["--store", str(where)]
    environment = dict(os.environ)
    if config_home is not None:
        environment = {k: v for k, v in environment.items() if not k.startswith("IMAGEKIT_")}
        environment["XDG_CONFIG_HOME"] = str(config_home)
    environment.update(env or {})
    feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run(
        [sys.executable, "-m", "imagekit", command, *prefix, *rest],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=environment,
        check=False,
        **feed,
    )


def imagekit_json(*args: str, **options: Any) -> Any:
    """:func:`imagekit` with ``--json``: the parsed output of a command that must succeed."""
    done = imagekit(*args, "--json", **options)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)

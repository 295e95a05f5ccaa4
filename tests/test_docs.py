"""The runnable example in docs/api.md runs, so the documentation cannot rot silently."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_api_example_runs() -> None:
    text = (REPO / "docs" / "api.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert example is not None
    result = subprocess.run(
        [sys.executable, "-c", example[1]], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "example:1 pinned" in result.stdout

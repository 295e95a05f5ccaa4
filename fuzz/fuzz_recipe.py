"""Fuzz the recipe loader: any text gives a Recipe or an ImagekitError, never another exception.

    python fuzz/fuzz_recipe.py [CORPUS_DIR ...] [libFuzzer flags, e.g. -runs=3000]

Seeds: fuzz/corpus/recipe/ (bundled recipes and a scratch recipe). See fuzz/README.md.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["imagekit"]):
    from imagekit.errors import ImagekitError
    from imagekit.recipe import load_recipe_string

# Relative paths in a recipe (keys, content, kickstart) resolve here: an empty directory.
# In $TMPDIR; left behind, as libFuzzer exits without running atexit.
_TEMP = tempfile.TemporaryDirectory(prefix="imagekit-fuzz-recipe-")
BASE_DIR = Path(_TEMP.name)


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    with contextlib.suppress(ImagekitError):
        load_recipe_string(text, base_dir=BASE_DIR)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

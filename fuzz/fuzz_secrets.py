"""Fuzz the readers that redact secrets and parse other people's documents.

    python fuzz/fuzz_secrets.py [CORPUS_DIR ...] [libFuzzer flags, e.g. -runs=3000]

The first byte picks the reader, the rest is its input (UTF-8, ``replace``):
0: a recipe → ``customize.recorded_recipe``: what it records holds none of the secrets it found;
1: a kickstart → ``sources.kickstart.redact``: the recorded text holds none of its secrets;
2: a cloud-config → ``boot.cloudconfig.load_cloud_config``;
3: a cosign payload → ``verify.cosign.parse_payload``; 4: a signature manifest →
``verify.cosign.parse_signature_manifest``.
Only ImagekitError may escape. Seeds: fuzz/corpus/secrets/. See fuzz/README.md.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["imagekit"]):
    from imagekit.boot.cloudconfig import load_cloud_config
    from imagekit.customize.redact import _secrets, recorded_recipe  # _secrets: what it found
    from imagekit.errors import ImagekitError
    from imagekit.recipe import load_recipe_string
    from imagekit.sources.kickstart.redact import redact
    from imagekit.verify.cosign import parse_payload, parse_signature_manifest

_TEMP = tempfile.TemporaryDirectory(prefix="imagekit-fuzz-secrets-")
BASE_DIR = Path(_TEMP.name)
# What redaction writes in place of a secret: a secret that is part of it is not a leak.
_MARKERS = "<redacted> set withheld"


def _recipe(text: str) -> None:
    recipe = load_recipe_string(text, base_dir=BASE_DIR)
    recorded = recorded_recipe(recipe)
    for secret in _secrets(recipe.customize).spelled:
        if secret and secret not in _MARKERS and secret in recorded.text:
            raise AssertionError(f"secret {secret!r} is still in the recorded recipe text")


def _kickstart(text: str) -> None:
    result = redact(text)
    for secret in result.secrets:
        if secret and secret not in _MARKERS and secret in result.text:
            raise AssertionError(f"secret {secret!r} is still in the recorded kickstart")


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, text = data[0] % 5, data[1:].decode("utf-8", errors="replace")
    with contextlib.suppress(ImagekitError):
        if mode == 0:
            _recipe(text)
        elif mode == 1:
            _kickstart(text)
        elif mode == 2:
            load_cloud_config(text, "fuzz")
        elif mode == 3:
            parse_payload(data[1:])
        else:
            parse_signature_manifest(data[1:])


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

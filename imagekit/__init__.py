"""imagekit: get virtual-machine disk images onto hosts, verified, cached and repeatable.

import imagekit
store = imagekit.open_store()
image = store.pull(imagekit.load_recipe("recipes/demo.toml"))
print(image.path, image.verification)
"""

import importlib
from typing import TYPE_CHECKING, Any

from imagekit._version import __version__
from imagekit.errors import (
    BootError,
    CheckError,
    ChecksumError,
    CustomizeError,
    FetchError,
    ImagekitError,
    RecipeError,
    RefNotFoundError,
    SignatureError,
    StoreError,
    UnsafeImageError,
    VerificationError,
)
from imagekit.progress import ProgressCallback, ProgressEvent

if TYPE_CHECKING:
    from imagekit.image import Image
    from imagekit.recipe import Recipe, load_recipe, load_recipe_file, load_recipe_string
    from imagekit.recipe import bundled_recipes as list_recipes
    from imagekit.store import Store, open_store
    from imagekit.verify.local import verify_local
    from imagekit.verify.policy import VerifiedChecksums, verify_checksum_file

# The rest of the API loads on first use: a command (``imagekit push``) imports only the stages
# it runs, so its start-up does not pay for the recipe loader or the export code.
_LAZY = {
    "Image": ("imagekit.image", "Image"),
    "Recipe": ("imagekit.recipe", "Recipe"),
    "load_recipe": ("imagekit.recipe", "load_recipe"),
    "load_recipe_file": ("imagekit.recipe", "load_recipe_file"),
    "load_recipe_string": ("imagekit.recipe", "load_recipe_string"),
    "list_recipes": ("imagekit.recipe", "bundled_recipes"),
    "Store": ("imagekit.store", "Store"),
    "open_store": ("imagekit.store", "open_store"),
    "verify_local": ("imagekit.verify.local", "verify_local"),
    "VerifiedChecksums": ("imagekit.verify.policy", "VerifiedChecksums"),
    "verify_checksum_file": ("imagekit.verify.policy", "verify_checksum_file"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'imagekit' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


__all__ = [
    "BootError",
    "CheckError",
    "ChecksumError",
    "CustomizeError",
    "FetchError",
    "Image",
    "ImagekitError",
    "ProgressCallback",
    "ProgressEvent",
    "Recipe",
    "RecipeError",
    "RefNotFoundError",
    "SignatureError",
    "Store",
    "StoreError",
    "UnsafeImageError",
    "VerificationError",
    "VerifiedChecksums",
    "__version__",
    "list_recipes",
    "load_recipe",
    "load_recipe_file",
    "load_recipe_string",
    "open_store",
    "verify_checksum_file",
    "verify_local",
]

"""imagekit: get virtual-machine disk images onto hosts, verified, cached and repeatable.

import imagekit
store = imagekit.open_store()
image = store.pull(imagekit.load_recipe("recipes/demo.toml"))
print(image.path, image.verification)
"""

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
from imagekit.image import Image
from imagekit.progress import ProgressCallback, ProgressEvent
from imagekit.recipe import Recipe, load_recipe, load_recipe_file, load_recipe_string
from imagekit.recipe import bundled_recipes as list_recipes
from imagekit.store import Store, open_store
from imagekit.verify.local import verify_local
from imagekit.verify.policy import VerifiedChecksums, verify_checksum_file

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

"""imagekit: get virtual-machine disk images onto hosts, verified, cached and repeatable.

import imagekit
store = imagekit.open_store()
image = store.pull(imagekit.load_recipe("recipes/demo.toml"))
print(image.path, image.verification)
"""

from imagekit.api import list_recipes, open_store, verify_local
from imagekit.errors import (
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
from imagekit.store import Store
from imagekit.verify import VerifiedChecksums, verify_checksum_file

__version__ = "0.1.0"

__all__ = [
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

"""Recipes: TOML (or Python) descriptions of an image, loaded strictly and kept verbatim.

``model`` is the data, ``schema`` the one table of keys (docs and JSON Schema come from it),
``load`` the parser, ``find`` the lookup by name.
"""

from imagekit.recipe.find import (
    BUNDLED_RECIPES,
    RECIPE_SUFFIX,
    bundled_recipes,
    describe,
    load_base,
    load_installer,
    load_recipe,
    recipe_dirs,
    recipe_summaries,
)
from imagekit.recipe.load import host_arch, load_recipe_file, load_recipe_string
from imagekit.recipe.model import (
    BootTest,
    CloudInit,
    HttpSource,
    KeyPin,
    KickstartSource,
    ProfileCheck,
    Recipe,
    RecipeSource,
    ResolveSpec,
    ScratchSource,
    Source,
)
from imagekit.recipe.schema import (
    DISK_FORMATS,
    FILESYSTEM_LABEL_MAX,
    HTTP_FORMATS,
    KICKSTART_DELIVERIES,
    PARTITION_TABLES,
    RESOLVERS,
    SCRATCH_MIN_SIZE,
    recipe_json_schema,
    recipe_reference,
)
from imagekit.recipe.templates import fill_pattern, pattern_fields, version_key

__all__ = [
    "BUNDLED_RECIPES",
    "DISK_FORMATS",
    "FILESYSTEM_LABEL_MAX",
    "HTTP_FORMATS",
    "KICKSTART_DELIVERIES",
    "PARTITION_TABLES",
    "RECIPE_SUFFIX",
    "RESOLVERS",
    "SCRATCH_MIN_SIZE",
    "BootTest",
    "CloudInit",
    "HttpSource",
    "KeyPin",
    "KickstartSource",
    "ProfileCheck",
    "Recipe",
    "RecipeSource",
    "ResolveSpec",
    "ScratchSource",
    "Source",
    "bundled_recipes",
    "describe",
    "fill_pattern",
    "host_arch",
    "load_base",
    "load_installer",
    "load_recipe",
    "load_recipe_file",
    "load_recipe_string",
    "pattern_fields",
    "recipe_dirs",
    "recipe_json_schema",
    "recipe_reference",
    "recipe_summaries",
    "version_key",
]

"""Build: a base, then one cached qcow2 layer per customization step."""

from imagekit.build.build import Builder, BuildResult, build, customize_image
from imagekit.build.cache import BuildCache
from imagekit.build.layers import LayerReport

__all__ = ["BuildCache", "BuildResult", "Builder", "LayerReport", "build", "customize_image"]

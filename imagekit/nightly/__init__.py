"""Nightly builds: ``imagekit build --all DIR``, a folder of recipes built as a graph.

``graph`` (which recipe builds on which), ``run`` (the parallel scheduler), ``job`` (one
recipe: its change key, build, push), ``options``,
``claims`` (a key claimed in the registry, so builders at the same moment build it once),
``memory`` (how many builds fit), ``report`` (JSON) and ``junit`` (JUnit XML). It uses the
public :class:`imagekit.Store` API, the recipe loader and, for claims, the registry client;
docs/nightly.md tells the story.
"""

from imagekit.nightly.graph import Graph, Node, load_folder
from imagekit.nightly.job import Listener
from imagekit.nightly.junit import junit_xml
from imagekit.nightly.options import NightlyOptions, key_tag
from imagekit.nightly.report import NightlyReport, RecipeResult, Stage
from imagekit.nightly.run import build_all

__all__ = [
    "Graph",
    "Listener",
    "NightlyOptions",
    "NightlyReport",
    "Node",
    "RecipeResult",
    "Stage",
    "build_all",
    "junit_xml",
    "key_tag",
    "load_folder",
]

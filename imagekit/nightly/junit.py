"""A nightly report as JUnit XML: one ``<testsuite>`` per recipe, one ``<testcase>`` per stage.

The shape GitLab (``artifacts:reports:junit``) and Jenkins (the JUnit plugin) read: a
``<testsuites>`` root with totals, suites named by recipe, testcases with ``classname`` (the
recipe) and ``time`` in seconds; a failed stage holds ``<failure message=...>``, a stage that did
not run (skipped recipe, cached work counts as passed) ``<skipped/>``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from imagekit.nightly.report import FAIL, SKIP, NightlyReport, RecipeResult


def junit_xml(report: NightlyReport) -> bytes:
    """The report as a UTF-8 JUnit XML document."""
    root = ET.Element("testsuites", name=f"imagekit build --all {report.directory}")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for result in report.results:
        suite = _suite(result)
        root.append(suite)
        for name in totals:
            totals[name] += int(suite.get(name, "0"))
    for name, value in totals.items():
        root.set(name, str(value))
    root.set("errors", "0")
    root.set("time", f"{report.seconds:.3f}")
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def _suite(result: RecipeResult) -> ET.Element:
    suite = ET.Element("testsuite", name=result.recipe)
    failures = skipped = 0
    for stage in result.stages:
        case = ET.SubElement(
            suite,
            "testcase",
            name=stage.name,
            classname=result.recipe,
            time=f"{stage.seconds:.3f}",
        )
        if stage.status == FAIL:
            failures += 1
            failure = ET.SubElement(case, "failure", message=stage.message or "failed")
            failure.text = stage.message
        elif stage.status == SKIP:
            skipped += 1
            ET.SubElement(case, "skipped", message=stage.message)
        elif stage.message:
            ET.SubElement(case, "system-out").text = stage.message
    suite.set("tests", str(len(result.stages)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    suite.set("time", f"{result.seconds:.3f}")
    return suite

"""JUnit XML: one test suite per model, one failing test case per finding, a passing case for a clean
model and an error case for a model that could not be read, as CI test-report viewers expect.

Every text from a model goes through `printable`: XML 1.0 cannot hold most control characters at all, and
CI viewers print these fields to terminals."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable

from bnlint.findings import Finding
from bnlint.report.safe_text import printable


def _case(suite: ET.Element, name: str, classname: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", name=printable(name), classname=printable(classname))


def render_junit(findings: list[Finding], errors: list[tuple[str, str]], *, checked: Iterable[str] = ()) -> str:
    by_file: dict[str, list[Finding]] = {path: [] for path in checked}
    for finding in findings:
        by_file.setdefault(finding.location.file, []).append(finding)
    cases = sum(max(len(items), 1) for items in by_file.values()) + len(errors)
    root = ET.Element("testsuites", name="bnlint", tests=str(cases), failures=str(len(findings)),
                      errors=str(len(errors)))
    for path in sorted(by_file):
        items = by_file[path]
        suite = ET.SubElement(root, "testsuite", name=printable(path), tests=str(max(len(items), 1)),
                              failures=str(len(items)), errors="0")
        if not items:
            _case(suite, "bnlint", path)
        for finding in items:
            loc = finding.location
            case = _case(suite, f"{finding.code} {loc.graph}/{loc.node}", path)
            failure = ET.SubElement(case, "failure", message=printable(finding.message),
                                    type=f"{finding.code} ({finding.severity.value})")
            where = loc.source or f"{loc.file}:{loc.graph}/{loc.node}"
            failure.text = printable(f"{where}: {finding.code} [{finding.severity.value}] {finding.message}")
    for path, message in errors:
        suite = ET.SubElement(root, "testsuite", name=printable(path), tests="1", failures="0", errors="1")
        case = _case(suite, "load", path)
        ET.SubElement(case, "error", message=printable(message), type="load-error").text = printable(f"{path}: {message}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

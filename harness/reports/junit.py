"""junit.xml: one ``<testcase>`` per selftest case, classname = fixture.variant,
the run's provenance as ``<properties>``."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from harness.reports.results import BAD, RunRecord, clean


def junit_xml(run: RunRecord) -> str:
    c = run.counts()
    suite = ET.Element("testsuite", {
        "name": f"iommufd-harness.{run.suite}.{run.profile}",
        "tests": str(len(run.tests)),
        "failures": str(c["fail"] + c["timeout"]),
        "errors": str(c["crash"] + c["notrun"]),
        "skipped": str(c["skip"]),
        "time": f"{sum(t.duration_s for t in run.tests):.3f}",
    })
    props = ET.SubElement(suite, "properties")
    flat = {
        "verdict": run.verdict, "profile": run.profile, "suite": run.suite,
        "kernel.version": run.kernel.get("version", ""), "kernel.source": run.kernel.get("source", ""),
        "kernel.build_id": run.kernel.get("build_id", ""),
        "qemu.version": run.qemu.get("version", ""), "qemu.accel": run.qemu.get("accel", ""),
    }
    for i, p in enumerate(run.patches):
        flat[f"patch.{i}"] = f"{p.get('name')} {p.get('sha256', '')[:12]} {p.get('subject', '')}"
    for k, v in flat.items():
        ET.SubElement(props, "property", {"name": k, "value": str(v)})
    for t in run.tests:
        classname, _, short = t.name.rpartition(".")
        case = ET.SubElement(suite, "testcase", {"classname": classname or t.binary, "name": short or t.name,
                                                 "time": f"{t.duration_s:.3f}"})
        if t.status in ("fail", "timeout"):
            el = ET.SubElement(case, "failure", {"message": t.reason or t.status, "type": t.status})
            el.text = t.log
        elif t.status in ("crash", "notrun"):
            el = ET.SubElement(case, "error", {"message": t.reason or t.status, "type": t.status})
            el.text = t.log
        elif t.status == "skip":
            ET.SubElement(case, "skipped", {"message": t.reason})
        if t.log and t.status not in BAD:
            ET.SubElement(case, "system-out").text = t.log
    if run.errors:
        ET.SubElement(suite, "system-err").text = clean("\n".join(run.errors))
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"

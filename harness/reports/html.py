"""report.html: one static page (no server, nothing fetched) over one run
or a merged matrix: the verdict, the cells (profile or board, suite, debug
kernel) with their counts and errors, and every test as a row, one column
per cell, coloured by status, failing tests first.  A click on a result
opens that test's log and the kernel reports attributed to it, with links
to the cell's files (summary.md, console.log, the binary's TAP); the open
result is in the address (``#t=TEST&c=CELL``), so a link to it can be
passed on.

The data is embedded as JSON and drawn by a short script: the page works
from a file:// URL, from CI artifacts, or from any static web server.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from harness.reports.results import BAD, STATUSES, RunRecord

MAX_LOG = 16 * 1024  # per result on the page; the whole log is in the cell's files
ORDER = {"crash": 0, "fail": 1, "timeout": 2, "notrun": 3, "skip": 4, "pass": 5}


def _cut(text: str, limit: int = MAX_LOG) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n[...]\n" + text[-limit // 2:]


def _link(dest: Path, target: Path) -> str | None:
    """``target`` relative to the page's directory, if it exists."""
    if not target.exists():
        return None
    return Path(os.path.relpath(target, dest)).as_posix()


def page_data(cells: list[tuple[str, Path, RunRecord]], dest: Path, verdict: str, history=None) -> dict:
    tests: dict[str, dict] = {}
    out_cells = []
    for i, (name, path, run) in enumerate(cells):
        splats: dict[str, list] = {}
        for s in run.kernel.get("splats") or []:
            if isinstance(s, dict):
                splats.setdefault(s.get("test") or "", []).append(
                    {k: _cut(str(s.get(k) or ""), 8192) for k in ("kind", "title", "signature", "text")})
        files = {label: _link(dest, path / rel) for label, rel in (
            ("summary", "summary.md"), ("results", "results.json"), ("console", "console.log"))}
        out_cells.append({"name": name, "verdict": run.verdict, "counts": run.counts(), "errors": run.errors,
                          "kernel": run.kernel.get("version", ""), "files": {k: v for k, v in files.items() if v},
                          "outside": splats.get("", []) + [x for k, v in splats.items()
                                                            if k not in {t.name for t in run.tests} and k
                                                            for x in v]})
        for t in run.tests:
            row = tests.setdefault(t.name, {"name": t.name, "results": {}})
            row["results"][str(i)] = {
                "status": t.status, "reason": t.reason, "duration": round(t.duration_s, 3), "log": _cut(t.log),
                "reports": splats.get(t.name, []),
                "tap": _link(dest, path / "tap" / f"{t.binary}.tap") if t.binary else None}
    rows = sorted(tests.values(), key=lambda r: (min(ORDER[x["status"]] for x in r["results"].values()),
                                                 r["name"]))
    data = {"verdict": verdict, "cells": out_cells, "tests": rows, "statuses": list(STATUSES), "bad": sorted(BAD)}
    if history is not None:  # harness.reports.history.History: a strip per result, the changes on top
        index = {name: str(i) for i, (name, _, _) in enumerate(cells)}
        strips: dict[str, dict] = {}
        for t in history.tests:
            if t["cell"] in index:
                strips.setdefault(index[t["cell"]], {})[t["test"]] = {
                    "statuses": t["statuses"], "since": t["first_failing"], "flaky": t["flaky_rate"]}
        data["history"] = {"nights": [n.name for n in history.nights], "strips": strips,
                           "changes": {**history.changes, "broke": by_test(history.changes["broke"]),
                                       "fixed": by_test(history.changes["fixed"])}}
    return data


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.4em; } h1 .v { padding: 0 .4em; border-radius: 3px; color: #fff; }
.v-pass { background: #2e7d32; } .v-fail { background: #c62828; } .v-error { background: #6d4c41; }
table { border-collapse: collapse; } th, td { border: 1px solid #ccc; padding: 2px 6px; }
th { background: #f4f4f4; text-align: left; } td.r { text-align: center; cursor: pointer; min-width: 4em; }
td.v-pass, td.v-fail, td.v-error { color: #fff; }
.st-pass { background: #c8e6c9; } .st-fail, .st-crash { background: #ef9a9a; font-weight: bold; }
.st-timeout { background: #ffcc80; } .st-notrun { background: #e0e0e0; } .st-skip { background: #fff59d; }
.st-none { background: #fff; color: #aaa; } td.open { outline: 3px solid #1565c0; }
.strip { margin-left: .4em; } .strip i { display: inline-block; width: .6em; height: .9em; margin-left: 1px;
  border: 1px solid #999; vertical-align: middle; }
li.broke { color: #b71c1c; font-weight: bold; } li.fixed { color: #1b5e20; }
#detail { margin: 1em 0; padding: .5em 1em; border: 1px solid #1565c0; display: none; }
pre { background: #f8f8f8; padding: .5em; overflow-x: auto; max-height: 30em; }
.err { color: #b71c1c; } .name { font-family: monospace; }
"""

SCRIPT = r"""
const D = JSON.parse(document.getElementById("data").textContent);
const $ = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) { if (k === "text") e.textContent = v; else e.setAttribute(k, v); }
  for (const k of kids) e.append(k);
  return e;
};
function head() {
  const h = document.getElementById("verdict");
  h.append("iommufd-harness: ", $("span", {class: "v v-" + D.verdict, text: D.verdict.toUpperCase()}),
           ` over ${D.cells.length} cell${D.cells.length === 1 ? "" : "s"}`);
  const t = document.getElementById("cells");
  const used = D.statuses.filter(s => D.cells.some(c => c.counts[s]));
  t.append($("tr", {}, ...["cell", "verdict", ...used, "kernel", "files"].map(x => $("th", {text: x}))));
  D.cells.forEach((c, i) => {
    const files = $("td", {});
    for (const [k, v] of Object.entries(c.files)) files.append($("a", {href: v, text: k}), " ");
    const tr = $("tr", {id: "cell-" + i}, $("td", {class: "name", text: c.name}),
                 $("td", {class: "v-" + c.verdict, text: c.verdict}),
                 ...used.map(s => $("td", {text: String(c.counts[s])})), $("td", {text: c.kernel}), files);
    t.append(tr);
    for (const e of c.errors) t.append($("tr", {}, $("td", {colspan: String(4 + used.length)},
                                                      $("pre", {class: "err", text: e}))));
    for (const s of c.outside) t.append($("tr", {}, $("td", {colspan: String(4 + used.length)},
                                                      report(s))));
  });
}
function report(s) {
  return $("div", {class: "report"}, $("b", {text: (s.kind || "report") + ": "}), s.title || "?",
           s.text ? $("pre", {text: s.text}) : "");
}
function matrix() {
  const t = document.getElementById("matrix");
  t.append($("tr", {}, $("th", {text: `test (${D.tests.length})`}),
                       ...D.cells.map(c => $("th", {text: c.name}))));
  for (const row of D.tests) {
    const tr = $("tr", {"data-test": row.name}, $("td", {class: "name", text: row.name}));
    D.cells.forEach((c, i) => {
      const r = row.results[String(i)];
      const td = $("td", {class: "r st-" + (r ? r.status : "none"), "data-cell": String(i),
                          text: r ? r.status + (r.reports.length ? " ⚠" : "") : "-"});
      const h = D.history && (D.history.strips[String(i)] || {})[row.name];
      if (h) td.append(strip(h));
      if (r) td.addEventListener("click", () => { location.hash = hash(row.name, i); });
      tr.append(td);
    });
    t.append(tr);
  }
}
function strip(h) {
  const s = $("span", {class: "strip", title: h.since ? `failing since ${h.since}; flaky rate ${h.flaky}` :
                                             `flaky rate ${h.flaky}`});
  h.statuses.forEach((st, k) => s.append($("i", {class: "h st-" + (st || "none"),
                                                 title: `${D.history.nights[k]}: ${st || "did not run"}`})));
  return s;
}
function changes() {
  if (!D.history) return;
  const c = D.history.changes, d = document.getElementById("changes");
  d.append($("h2", {text: c.previous ? `Since the previous night (${c.previous})` : "The first night"}));
  const ul = $("ul", {id: "changed"});
  for (const x of c.broke) ul.append($("li", {class: "broke", text: `broke: ${x.test} on ${x.cells.join(", ")} (${x.was} -> ${x.is})`}));
  for (const x of c.fixed) ul.append($("li", {class: "fixed", text: `fixed: ${x.test} on ${x.cells.join(", ")} (${x.was} -> ${x.is})`}));
  for (const x of c.no_verdict) ul.append($("li", {class: "no-verdict", text: `no verdict on ${x.cell} (${x.cause}): ${x.error.split("\n")[0]}`}));
  for (const x of c.new) ul.append($("li", {class: "new", text: `new: ${x.test} on ${x.cell}`}));
  for (const x of c.vanished) ul.append($("li", {class: "vanished", text: `vanished: ${x.test} on ${x.cell}`}));
  if (!ul.children.length && c.previous) ul.append($("li", {text: "nothing changed"}));
  d.append(ul);
}
function hash(test, cell) { return "t=" + encodeURIComponent(test) + "&c=" + cell; }
function show() {
  const p = new URLSearchParams(location.hash.slice(1));
  const d = document.getElementById("detail");
  document.querySelectorAll("td.open").forEach(e => e.classList.remove("open"));
  const row = D.tests.find(r => r.name === p.get("t"));
  const cell = p.get("c");
  const r = row && row.results[cell];
  if (!r) { d.style.display = "none"; return; }
  const c = D.cells[Number(cell)];
  const td = document.querySelector(`tr[data-test="${CSS.escape(row.name)}"] td[data-cell="${cell}"]`);
  if (td) { td.classList.add("open"); }
  d.replaceChildren($("h2", {id: "detail-title", text: `${row.name} on ${c.name}: ${r.status}`}));
  if (r.reason) d.append($("p", {class: "err", text: r.reason}));
  const links = $("p", {}, `${r.duration} s. `);
  if (r.tap) links.append($("a", {href: r.tap, text: "TAP"}), " ");
  for (const [k, v] of Object.entries(c.files)) links.append($("a", {href: v, text: k}), " ");
  d.append(links);
  if (r.reports.length) {
    d.append($("h3", {text: `kernel reports during this test (${r.reports.length})`}));
    for (const s of r.reports) d.append(report(s));
  }
  d.append($("h3", {text: "log"}), $("pre", {id: "detail-log", text: r.log || "(no output)"}));
  d.style.display = "block";
}
head(); changes(); matrix(); show();
window.addEventListener("hashchange", show);
document.body.setAttribute("data-rendered", "yes");
"""


def render(cells: list[tuple[str, Path, RunRecord]], dest: Path, verdict: str, history=None) -> str:
    data = json.dumps(page_data(cells, dest, verdict, history), separators=(",", ":"))
    data = data.replace("</", "<\\/")  # no log can end the script element
    title = f"iommufd-harness: {verdict.upper()}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style></head>\n<body>\n<h1 id=\"verdict\"></h1>\n<table id=\"cells\"></table>\n"
            '<div id="changes"></div>\n<div id="detail"></div>\n<h2>Tests</h2>\n<table id="matrix"></table>\n'
            f'<script type="application/json" id="data">{data}</script>\n<script>{SCRIPT}</script>\n'
            "</body></html>\n")


def by_test(changed: list[dict]) -> list[dict]:
    """Broke or fixed, one entry per test that changed the same way, with
    every cell it did that on (a regression on three cells is one line)."""
    out: dict[tuple, dict] = {}
    for x in changed:
        g = out.setdefault((x["test"], x["was"], x["is"]),
                           {"test": x["test"], "was": x["was"], "is": x["is"], "cells": [], "reason": ""})
        g["cells"].append(x["cell"])
        g["reason"] = g["reason"] or x.get("reason", "")
    return list(out.values())

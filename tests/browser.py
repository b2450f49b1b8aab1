"""A page as a real browser renders it: headless Chromium (Debian's
package, installed by make setup-test) loads it from disk, runs its scripts, and
the DOM after that is what tests read."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path


class Dom(HTMLParser):
    """The rendered page as a flat list of elements: (tag, attrs, text inside)."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[list] = []
        self.open: list[list] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        el = [tag, dict(attrs), ""]
        self.elements.append(el)
        if tag not in ("meta", "br", "img", "link", "input"):
            self.open.append(el)

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop()[0] == tag:
                break

    def handle_data(self, data):
        for el in self.open:
            el[2] += data

    def find(self, tag: str, **attrs) -> list[list]:
        return [e for e in self.elements if e[0] == tag and all(e[1].get(k.rstrip("_").replace("_", "-")) == v
                                                                  for k, v in attrs.items())]


def rendered(page: Path, fragment: str = "") -> Dom:
    browser = shutil.which("chromium")
    assert browser, "chromium is not installed (make setup-test installs it)"
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.resolve().as_uri() + fragment], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return Dom(res.stdout)

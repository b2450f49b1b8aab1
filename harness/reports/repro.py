"""The one place a reproducer command line is rendered."""

from __future__ import annotations

import shlex
from pathlib import Path


def reproducer(profile: str, suite: str, test: str, kernel_src: Path | str | None = None) -> str:
    """The command that runs ``test`` again the way it ran."""
    quoted = f"'{test}'" if "'" not in test else shlex.quote(test)  # quoted: no shell expands a name
    line = f"iommufd-harness run --profile {profile} --suite {suite} --tests {quoted}"
    if kernel_src:
        line += f" --kernel-src {kernel_src}"
    return line

"""The gate config a maintainer keeps next to the tree
(``<kernel-src>/iommufd-gate.toml``, or ``--gate-config``): its ``[gate]``
table (profiles, suites, debug kernel, inbox, who the reply is from and
Cc'd) and ``[gate.smtp]`` (the server, STARTTLS, the login whose password
comes from the environment, never from the file)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness import debugkernels
from harness.errors import InputError

CONFIG_NAME = "iommufd-gate.toml"  # kept next to the tree: <kernel-src>/iommufd-gate.toml


@dataclass
class Smtp:
    host: str
    port: int = 25
    starttls: bool = False
    user: str | None = None
    password_env: str | None = None  # the password is read from this variable, never from a file
    cafile: str | None = None  # the CA that signs the server's certificate (default: the system's)


@dataclass
class GateConfig:
    """``[gate]`` of the maintainer's TOML (every key optional)."""

    path: Path | None = None
    profiles: list[str] = field(default_factory=list)  # profile = "A" or profiles = ["A", "B"]
    suites: list[str] = field(default_factory=list)
    debug: tuple[str, ...] | None = None
    inbox: str | None = None
    sender: str | None = None  # From of the reply
    cc: list[str] = field(default_factory=list)  # besides the list, always
    cc_list: bool = True  # Cc the list the series came on
    reply_on_error: bool = False
    smtp: Smtp | None = None


def load_config(path: Path | None, tree: Path | None) -> GateConfig:
    """The gate config: ``path``, or <tree>/iommufd-gate.toml when it exists."""
    if path is None and tree is not None and (Path(tree) / CONFIG_NAME).is_file():
        path = Path(tree) / CONFIG_NAME
    if path is None:
        return GateConfig()
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"gate config {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"gate config {path} is not readable TOML: {e}") from None
    g = doc.get("gate")
    if not isinstance(g, dict):
        raise InputError(f"gate config {path} has no [gate] table", "see README, The gate on the mailing list")
    known = {"profile", "profiles", "suite", "suites", "debug", "inbox", "from", "cc", "cc_list", "reply_on_error",
             "smtp"}
    unknown = sorted(set(g) - known)
    if unknown:
        raise InputError(f"gate config {path}: unknown key(s) {', '.join(unknown)} in [gate]",
                         f"the keys are {', '.join(sorted(known))}")
    try:
        smtp = None
        if "smtp" in g:
            s = dict(g["smtp"])
            smtp = Smtp(host=str(s.pop("host")), port=int(s.pop("port", 25)), starttls=bool(s.pop("starttls", False)),
                        user=s.pop("user", None), password_env=s.pop("password_env", None),
                        cafile=s.pop("cafile", None))
            if "password" in s:
                raise InputError(f"gate config {path}: [gate.smtp] password is not read from a file",
                                 "put it in an environment variable and name it: password_env = \"VAR\"")
            if s:
                raise InputError(f"gate config {path}: unknown key(s) {', '.join(sorted(s))} in [gate.smtp]")
        debug = g.get("debug")
        names = {}
        for one, many in (("profile", "profiles"), ("suite", "suites")):
            if one in g and many in g:
                raise InputError(f"gate config {path}: [gate] has both {one} and {many}", f"keep {many} = [...]")
            v = g.get(many, g.get(one, []))
            names[many] = [v] if isinstance(v, str) else [str(x) for x in v]
        return GateConfig(
            path=Path(path), profiles=names["profiles"], suites=names["suites"],
            debug=debugkernels.parse([debug if isinstance(debug, str) else ",".join(debug)]) if debug is not None
            else None,
            inbox=g.get("inbox"), sender=g.get("from"), cc=list(g.get("cc", [])), cc_list=bool(g.get("cc_list", True)),
            reply_on_error=bool(g.get("reply_on_error", False)), smtp=smtp)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"gate config {path} is invalid: {type(e).__name__}: {e}") from None

"""``gate``: a series from the mailing list, its verdict as a reply in its thread."""

from __future__ import annotations

from pathlib import Path

from harness.commands import args as shared
from harness.errors import InputError
from harness.ui import Ui


def add(sub) -> None:
    p = sub.add_parser("gate", help="a series from the mailing list (message-id, lore link or mbox) on its "
                                    "base: its verdict against the tree without it, as a reply in its thread",
                       description="Fetches the series with b4 (the newest revision), applies it to its "
                                   "base-commit in --kernel-src, runs it on the gate's debug kernel against the "
                                   "same tree without it (--compare-base), and writes the reply (--reply-to) or "
                                   "sends it (--smtp).  A gate config, --gate-config or <kernel-src>/"
                                   "iommufd-gate.toml, may name [gate] profile, suite, debug, inbox, from, cc, "
                                   "cc_list, reply_on_error and [gate.smtp].")
    p.add_argument("series", metavar="SERIES", nargs="?",
                   help="the series: a message-id (<id@host> or bare), a link into a public-inbox archive, or an "
                        "mbox/maildir")
    g = p.add_argument_group("polling the list (a cron or CI job)")
    g.add_argument("--new", action="store_true",
                   help="instead of SERIES: every series revision posted to the inbox since the last poll, each "
                        "gated once (the newest revision of its series); a state file per inbox remembers them")
    g.add_argument("--since", metavar="WHEN",
                   help="with --new: look back to this time (2026-12-01, 2026-12-01T08:00, 3d, 12h; default: the "
                        "last poll less an hour, a day on the first poll)")
    g.add_argument("--state", type=Path, metavar="FILE",
                   help="with --new: the state file (default: <work>/gate/<inbox>.json)")
    g.add_argument("--list", dest="list_only", action="store_true",
                   help="with --new: list what would be gated; gate nothing, change nothing")
    g = p.add_argument_group("series")
    g.add_argument("--inbox", metavar="URL",
                   help="the public-inbox archive of a message-id, its list URL (default: the config's, else "
                        "https://lore.kernel.org/all)")
    g.add_argument("--revision", type=int, metavar="N", help="this revision of the series (default: the newest)")
    g.add_argument("--base", metavar="REV",
                   help="the base when the series names no base-commit (default: the tree's HEAD, said so in "
                        "the reply)")
    g.add_argument("--profiles", metavar="A,B,...",
                   help="gate on each of these profiles (default: the config's profiles, else --profile)")
    g.add_argument("--suites", metavar="A,B,...",
                   help="and each of these suites (default: the config's suites, else --suite); the verdict is "
                        "FAIL if the series regressed any of them")
    g.add_argument("--gate-config", type=Path, metavar="FILE",
                   help="the gate config (default: <kernel-src>/iommufd-gate.toml when it exists)")
    g = p.add_argument_group("reply")
    g.add_argument("--reply-to", type=Path, metavar="FILE.eml", help="write the reply to this file")
    g.add_argument("--smtp", metavar="HOST[:PORT]",
                   help="send the reply through this server (STARTTLS and login from the config's [gate.smtp])")
    g.add_argument("--reply-on-error", action="store_true",
                   help="also reply when there is no verdict (the series could not be fetched or applied, the "
                        "kernel did not build or boot); by default the author is never mailed then")
    g.add_argument("--cc", action="append", default=[], metavar="ADDR",
                   help="also Cc this address (repeatable; the list the series came on is Cc'd by default)")
    g.add_argument("--from", dest="sender", metavar="ADDR", help="From of the reply")
    g.add_argument("--no-walk", dest="walk", action="store_false",
                   help="when a series of several patches fails, do not walk it (bisect from 6 patches on) to "
                        "name the first patch that broke it in the reply and answer under that patch too")
    shared.common(p)
    p.add_argument("--results", type=Path, metavar="DIR",
                   help="where to write results (default: a new dir under <work>/results)")
    p.set_defaults(func=cmd_gate)


def cmd_gate(args, ui: Ui) -> int:
    from harness.mail import gate

    if args.new == bool(args.series):
        raise InputError("gate takes a SERIES, or --new to poll the inbox, not both" if args.new else
                         "gate needs a SERIES (message-id, link or mbox), or --new to poll the inbox",
                         "see 'iommufd-harness gate --help'")
    if not args.new and (args.since or args.state or args.list_only):
        raise InputError("--since, --state and --list go with --new")
    req = gate.GateRequest(series=args.series or "", inbox=args.inbox, revision=args.revision, base=args.base,
                           reply_to=args.reply_to, smtp=args.smtp, reply_on_error=args.reply_on_error,
                           cc=list(args.cc), sender=args.sender, config=args.gate_config, walk=args.walk,
                           profiles=shared.names(args.profiles), suites=shared.names(args.suites))
    if args.new:
        from harness.mail import watch

        return watch.gate_new(req, watch.PollRequest(since=args.since, state=args.state, list_only=args.list_only),
                              shared.options(args), ui)
    return gate.gate(req, shared.options(args), ui)

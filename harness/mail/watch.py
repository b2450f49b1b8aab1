"""``gate --new``: every series revision posted to an inbox since the last
poll, gated once, for a cron or CI job that polls the list.

What is new comes from the archive's own search, as an Atom feed
(``INBOX/?q=rt:EPOCH..&x=A``, by received time, paged): the messages whose
subject is a patch and not a reply, i.e. cover letters, single patches and
the first patch of a series without a cover.  Each is gated (the newest
revision of its series, as ``gate MSGID`` does), and a state file per inbox
remembers what was gated, under which message-ids, and with what verdict:
the next poll skips every message of a series already gated, and an older
revision gated as its newer one is recorded as superseded.  The state file
is rewritten whole (write, fsync, rename) after each series; a poll holds
its lock, so two polls of one inbox never gate the same series."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import re
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EXIT_ERROR, EXIT_FAIL, EXIT_PASS, HarnessError, InputError
from harness.mail import gate
from harness.mail.series import LORE, inbox_get
from harness.pipeline import Options
from harness.ui import Ui
from harness.workdir import WorkDir

ATOM = "{http://www.w3.org/2005/Atom}"
THR = "{http://purl.org/syndication/thread/1.0}"
PAGE = 200  # public-inbox's largest search page
MAX_PAGES = 50  # 10000 messages per poll: a first poll with a far --since
MARGIN = dt.timedelta(hours=1)  # polls overlap by this much: mail is archived a little after it is received
STATE_VERSION = 1
ATTEMPTS = 3  # a series with no verdict is tried by this many polls, then left (its entry says why)
_PATCH = re.compile(r"\s*\[[^]]*\bPATCH\b", re.I)  # [PATCH ...], [RFC PATCH v2 1/3], [PATCH net-next]


@dataclass(frozen=True)
class Posting:
    """One message of the feed that starts a series revision."""

    msgid: str
    subject: str
    author: str
    date: str  # as the feed says (ISO 8601)
    in_reply_to: str | None
    revision: int
    counter: int
    expected: int


def _msgid_of(href: str) -> str:
    """``https://host/list/ID/`` -> ID (public-inbox escapes it in the path)."""
    parts = [p for p in urllib.parse.urlsplit(href).path.split("/") if p]
    return urllib.parse.unquote(parts[-1]) if parts else ""


def feed(inbox: str, since: dt.datetime) -> list[tuple[str, str, str, str, str | None]]:
    """(message-id, subject, author, date, in-reply-to) of every message the
    archive received since ``since``, oldest first."""
    base = inbox.rstrip("/") + "/"
    query = f"rt:{int(since.timestamp())}.."  # seconds since the epoch: public-inbox takes 5+ digits as such
    out: dict[str, tuple] = {}
    for page in range(MAX_PAGES):
        url = base + "?" + urllib.parse.urlencode({"q": query, "x": "A", "o": page * PAGE, "l": PAGE})
        status, body = inbox_get(url)
        if status == 404:  # public-inbox: "[No results found]"
            break
        if status != 200:
            text = re.sub(r"<[^>]+>", " ", body.decode(errors="replace"))
            raise InputError(f"the inbox {inbox} refused the search {query!r}: HTTP {status} "
                             f"({' '.join(text.split())[:200]})",
                             "gate --new needs a public-inbox archive with its search index (lore has one)")
        try:
            root = ET.fromstring(body)
        except ET.ParseError as e:
            raise InputError(f"the inbox {inbox} answered the search with no Atom feed ({e})",
                             "check --inbox: it must be a public-inbox list URL") from None
        entries = root.findall(f"{ATOM}entry")
        for e in entries:
            link = e.find(f"{ATOM}link")
            msgid = _msgid_of(link.get("href", "")) if link is not None else ""
            if not msgid:
                continue
            irt = e.find(f"{THR}in-reply-to")
            name = e.findtext(f"{ATOM}author/{ATOM}name") or ""
            addr = e.findtext(f"{ATOM}author/{ATOM}email") or ""
            out[msgid] = (msgid, e.findtext(f"{ATOM}title") or "", f"{name} <{addr}>" if name else addr,
                          e.findtext(f"{ATOM}updated") or "",
                          _msgid_of(irt.get("href", "")) if irt is not None else None)
        if len(entries) < PAGE:
            break
    return sorted(out.values(), key=lambda m: (m[3], m[0]))


def starts(messages: list[tuple]) -> list[Posting]:
    """The messages that start a series revision: a cover letter (0/N), a
    single patch, or 1/N when its series has no cover letter in the feed."""
    import b4

    out = []
    covers = set()
    for msgid, subject, author, date, irt in messages:
        s = b4.LoreSubject(subject)
        if s.reply or not _PATCH.match(subject):
            continue
        if s.counter == 0:
            covers.add(msgid)
        elif s.counter != 1:
            continue
        out.append(Posting(msgid, subject, author, date, irt, s.revision, s.counter, s.expected))
    return [p for p in out if p.counter == 0 or p.in_reply_to not in covers]


# --- the state file ------------------------------------------------------------


def state_path(work_root: Path, inbox: str) -> Path:
    """<work>/gate/<host>-<list>.json: one per inbox."""
    u = urllib.parse.urlsplit(inbox)
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{u.netloc}{u.path}").strip("-") or "inbox"
    return work_root / "gate" / f"{slug}.json"


class State:
    """What was gated from one inbox: ``series`` (by the message-id each
    revision starts with) and ``seen`` (every message-id of a gated
    series -> that key), and when the last poll began."""

    def __init__(self, path: Path, inbox: str):
        self.path = path
        self.inbox = inbox
        self.polled: str | None = None
        self.series: dict[str, dict] = {}
        self.seen: dict[str, str] = {}
        if path.is_file():
            try:
                doc = json.loads(path.read_text())
                if doc.get("version") != STATE_VERSION or doc.get("inbox") != inbox:
                    raise ValueError(f"it is for {doc.get('inbox')!r}, version {doc.get('version')}")
                self.polled, self.series, self.seen = doc.get("polled"), dict(doc["series"]), dict(doc["seen"])
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"the gate's state file {path} is not one of this inbox ({e})",
                                 "give another --state, or move the file away to gate the inbox afresh") from None

    def known(self, msgid: str) -> dict | None:
        """The entry of the revision ``msgid`` was gated as (a superseded
        revision's: its newer one's)."""
        key = self.seen.get(msgid)
        entry = self.series.get(key) if key else None
        if entry is not None and "superseded_by" in entry:
            entry = self.series.get(entry["superseded_by"], entry)
        return entry

    def done(self, msgid: str) -> bool:
        """Gated, or given up: no verdict after ATTEMPTS polls."""
        entry = self.known(msgid)
        if entry is None:
            return False
        return entry.get("verdict") != "error" or entry.get("attempts", 1) >= ATTEMPTS

    def record(self, key: str, entry: dict, msgids: list[str]) -> None:
        self.series[key] = entry
        for m in [key, *msgids]:
            self.seen[m] = key

    def save(self) -> None:
        doc = {"version": STATE_VERSION, "inbox": self.inbox, "polled": self.polled, "series": self.series,
               "seen": self.seen}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps(doc, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


@contextlib.contextmanager
def polling(path: Path):
    """The state file's lock, for the length of a poll."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HarnessError(f"another 'gate --new' is polling with the state file {path}",
                               "let it finish; a cron job should not start a poll while one runs") from None
        yield
    finally:
        os.close(fd)


def since_of(state: State, since: str | None, now: dt.datetime) -> dt.datetime:
    """Where this poll's search starts: --since, else the last poll less a
    margin, else a day ago (a first poll)."""
    if since:
        return parse_since(since, now)
    if state.polled:
        return dt.datetime.fromisoformat(state.polled) - MARGIN
    return now - dt.timedelta(days=1)


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """``2026-12-01``, ``2026-12-01T08:00``, or ``3d``/``12h``/``30m`` ago."""
    m = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if m:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
        return now - dt.timedelta(**{unit: int(m.group(1))})
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"--since {text!r} is not a time", "give 2026-12-01, 2026-12-01T08:00, 3d, 12h or 30m") \
            from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


@dataclass
class PollRequest:
    """``gate --new``: the inbox's new series, each gated once."""

    since: str | None = None  # --since; default: the last poll (less a margin), else a day ago
    state: Path | None = None  # --state; default: <work>/gate/<inbox>.json
    list_only: bool = False  # --list: what would be gated, nothing run, the state untouched


def gate_new(req: "gate.GateRequest", poll: PollRequest, opts: Options, ui: Ui) -> int:
    """Poll the inbox: gate every series revision posted since the last poll
    that the state file does not have; record each verdict as it comes.
    Exit 2 if a series got no verdict, else 1 if one failed, else 0."""
    if req.revision is not None or req.reply_to is not None:
        raise InputError("gate --new gates each new series as it is: --revision and --reply-to do not apply",
                         "each series' reply is kept in its results dir (reply.eml); --smtp sends them")
    opts, cfg, tree, cells = gate._setup(req, opts)
    inbox = (req.inbox or cfg.inbox or LORE).rstrip("/")
    work = WorkDir(opts.work).prepare()
    path = (poll.state.expanduser().resolve() if poll.state else state_path(work.root, inbox))
    root = opts.results.expanduser().resolve() if opts.results else None
    if root is not None and root.exists() and any(root.iterdir()):
        raise InputError(f"results dir {root} is not empty", "give a new directory to --results")
    with polling(path):
        state = State(path, inbox)
        now = dt.datetime.now(dt.timezone.utc)
        since = since_of(state, poll.since, now)
        ui.stage("poll")
        postings = starts(feed(inbox, since))
        new = [p for p in postings if not state.done(p.msgid)]
        ui.info(f"{inbox}: {len(postings)} series revision(s) posted since {since:%Y-%m-%d %H:%M} UTC, "
                f"{len(new)} to gate (state: {path})")
        for p in new:
            ui.info(f"  v{p.revision} {p.subject}  <{p.msgid}>  {p.author}")
        if poll.list_only:
            return EXIT_PASS
        codes, gated, tried = [], [], set()
        for i, p in enumerate(new, 1):
            if state.done(p.msgid) or state.seen.get(p.msgid) in tried:
                # gated in this poll, as the newer revision of an earlier message
                ui.info(f"<{p.msgid}> was gated in this poll with its series: skipped")
                continue
            before = state.known(p.msgid) or {}
            mailed_error = bool(before.get("reply_sent"))
            # an error is mailed once (--reply-on-error), not by every poll that tries again
            one = dataclasses.replace(req, series=p.msgid, inbox=inbox,
                                      reply_on_error=req.reply_on_error and not mailed_error)
            one_cfg = dataclasses.replace(cfg, reply_on_error=False) if mailed_error else cfg
            slug = re.sub(r"[^A-Za-z0-9]+", "-", p.msgid).strip("-")[:60]
            ropts = opts.but(results=root / f"{i:02d}-{slug}" if root else None)
            ui.stage(f"series {i}/{len(new)}")
            at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            try:
                code, info = gate._gate_series(one, ropts, one_cfg, tree, cells, ui)
                error = (info.get("gate") or {}).get("error", "")
            except KeyboardInterrupt:
                state.save()
                raise
            except HarnessError as e:
                ui.error(e.render())
                code, info, error = EXIT_ERROR, {}, e.message
            ser = info.get("series") or {}
            verdict = (info.get("gate") or {}).get("verdict", "error")
            key = (ser.get("message_ids") or [p.msgid])[0]
            reply = (info.get("gate") or {}).get("reply") or {}
            entry = {"revision": ser.get("revision", p.revision), "subject": ser.get("subject", p.subject),
                     "author": ser.get("author", p.author), "posted": p.date, "gated": at, "verdict": verdict,
                     "results": info.get("results"), "reply": reply.get("message_id"),
                     "reply_sent": bool(reply.get("sent")) or mailed_error}
            if verdict == "error":
                entry["error"] = error
                entry["attempts"] = (state.series.get(key, {}).get("attempts", 0) or 0) + 1
            state.record(key, entry, list(ser.get("message_ids") or []))
            tried.add(key)
            if key != p.msgid:
                state.record(p.msgid, {"revision": p.revision, "subject": p.subject, "posted": p.date,
                                       "superseded_by": key}, [])
            state.save()
            codes.append(code)
            gated.append({"message_id": p.msgid, **entry, "gated_as": key})
        state.polled = now.isoformat(timespec="seconds")
        state.save()
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "poll.json").write_text(json.dumps(
            {"inbox": inbox, "since": since.isoformat(timespec="seconds"), "state": str(path), "gated": gated},
            indent=2) + "\n")
    for g in gated:
        ui.info(f"{g['verdict'].upper():5} v{g['revision']} {g['subject']}  {g.get('results') or g.get('error', '')}")
    if any(c == EXIT_ERROR for c in codes):
        return EXIT_ERROR
    return EXIT_FAIL if any(c == EXIT_FAIL for c in codes) else EXIT_PASS

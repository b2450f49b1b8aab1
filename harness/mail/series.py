"""A patch series as it travels on a mailing list: by message-id from a
public-inbox archive (lore, or any other), by a link into one, or from a
local mbox or maildir, fetched and made ready to apply by b4.

b4 does the work a maintainer's ``b4 am`` does: the thread, the newest
revision of the series (or the one asked for), the cover letter, the
trailers given in replies, the patches in order, ``base-commit:`` and
``prerequisite-patch-id:``.  Its library interface is not a stable API:
pyproject pins the version this module was written against."""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import logging
import os
import re
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.errors import InputError

LORE = "https://lore.kernel.org/all"
_MSGID = re.compile(r"<?([^<>\s]+@[^<>\s]+)>?")


@dataclass(frozen=True)
class Source:
    """What the user named: a message-id in an archive, or a local file."""

    msgid: str | None = None
    inbox: str | None = None  # the archive's list URL: https://lore.kernel.org/all
    path: Path | None = None

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path) + (f" ({self.msgid})" if self.msgid else "")
        return f"<{self.msgid}> from {self.inbox}"


def parse_source(spec: str, inbox: str | None) -> Source:
    """A message-id (``<id@host>`` or bare), a link into a public-inbox
    archive (``https://lore.kernel.org/LIST/ID/...``; the list is the
    archive), or an mbox/maildir on disk."""
    path = Path(spec).expanduser()
    if path.exists():
        return Source(path=path.resolve())
    if re.match(r"https?://", spec):
        u = urllib.parse.urlsplit(spec)
        parts = [urllib.parse.unquote(p) for p in u.path.split("/") if p]
        at = next((i for i, p in enumerate(parts) if "@" in p), None)
        if at is None:
            raise InputError(f"{spec}: no message-id in this link",
                             "give a link to a message (https://HOST/LIST/MESSAGE-ID/) or the message-id itself")
        lists = "/".join(parts[:at]) or "all"  # lore.kernel.org/r/ID and /ID: every list
        if lists == "r":
            lists = "all"
        return Source(msgid=parts[at], inbox=inbox or f"{u.scheme}://{u.netloc}/{lists}")
    m = _MSGID.fullmatch(spec.strip())
    if m:
        return Source(msgid=m.group(1), inbox=(inbox or LORE).rstrip("/"))
    raise InputError(f"{spec!r} is neither a message-id, a link to one, nor an mbox or maildir here",
                     "give the series' message-id (<id@host>), its lore link, or a file that holds it")


@dataclass
class Mail:
    """One message of the series, as the reply needs it."""

    msgid: str
    subject: str  # the whole subject: [PATCH v2 1/3] iommufd: ...
    sender: str  # From, as written
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)  # without the message itself
    list_ids: list[str] = field(default_factory=list)  # List-Id, as the archive stamped it


@dataclass
class Series:
    source: str  # as the user named it
    inbox: str | None
    revision: int
    revisions: list[int]  # every revision the thread (and the search for newer ones) showed
    subject: str  # the series' subject, without [PATCH ...]
    author: str  # "Name <email>"
    author_email: str
    cover: Mail | None
    patches: list[Mail]
    base_commit: str | None
    prerequisite_patch_ids: list[str]
    change_id: str | None
    mbox: Path  # the patches ready to apply (trailers added), one file

    @property
    def first(self) -> Mail:
        """What a reply goes under: the cover letter, or the first patch."""
        return self.cover or self.patches[0]

    @property
    def msgids(self) -> list[str]:
        return [m.msgid for m in ([self.cover] if self.cover else []) + self.patches]

    def to_json(self) -> dict:
        data = asdict(self)
        data["mbox"] = str(self.mbox)
        data["message_ids"] = self.msgids
        return data


def _mail(lmsg) -> Mail:
    msg = lmsg.msg
    refs = [r.strip("<>") for r in " ".join(str(h) for h in msg.get_all("References", [])).split()]
    irt = _MSGID.search(str(msg.get("In-Reply-To", "")))
    if irt and irt.group(1) not in refs:
        refs.append(irt.group(1))
    addrs = lambda h: [email.utils.formataddr(a) for a in email.utils.getaddresses(  # noqa: E731
        [str(v) for v in msg.get_all(h, [])]) if a[1]]
    return Mail(lmsg.msgid, lmsg.full_subject, str(msg.get("From", "")), addrs("To"), addrs("Cc"), refs,
                [str(v) for v in msg.get_all("List-Id", [])])


@contextlib.contextmanager
def _b4(inbox: str | None, state: Path, log: Path):
    """b4, pointed at ``inbox`` (its midmask, as a user points it at lore),
    with its cache and data under ``state`` and its messages in ``log``."""
    state.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME")}
    for k in saved:
        os.environ[k] = str(state / k.split("_")[1].lower())
    import b4
    import b4.mbox  # noqa: F401 - get_extra_series

    logger = logging.getLogger("b4")
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        b4.setup_config(argparse.Namespace(config={}))
        cfg = b4.get_main_config()
        if inbox:
            cfg["midmask"] = inbox.rstrip("/") + "/%s"
            cfg["linkmask"] = inbox.rstrip("/") + "/%s"
            b4.LORENODE = None  # made from midmask on first use
        yield b4
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old_level)
        logger.propagate = old_propagate
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _last_lines(log: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return "; ".join(lines[-n:])


def fetch(source: Source, revision: int | None, out: Path) -> Series:
    """The series ``source`` names: its newest revision (b4 also searches the
    archive for newer ones) unless ``revision``; written ready to apply to
    ``out``/series.mbx (and the cover letter to series.cover).  b4's cache
    lives only as long as the fetch: a gate must see the archive as it is
    now (b4 keeps search results for minutes, whatever nocache says)."""
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    log = out / "b4.log"
    with tempfile.TemporaryDirectory(prefix="iommufd-b4-") as state, _b4(source.inbox, Path(state), log) as b4:
        if source.path is not None:
            msgs = b4.get_msgs_from_mailbox_or_maildir(str(source.path))
            if not msgs:
                raise InputError(f"{source.path} holds no mail", "give an mbox or maildir with the series")
        else:
            try:
                msgs = b4.get_pi_thread_by_msgid(source.msgid, nocache=True)
            except Exception as e:  # noqa: BLE001 - liblore's errors are not one class
                raise InputError(f"could not fetch <{source.msgid}> from {source.inbox}: {e}",
                                 "check the message-id and --inbox (the archive's list URL)") from None
            if not msgs:
                _answers(source.inbox)
                raise InputError(f"{source.inbox} has no message <{source.msgid}> ({_last_lines(log, 1)})",
                                 "check the message-id, and --inbox (the archive's list URL)")
            msgs = _other_revisions(b4, source, msgs, 1)  # newer ones: the newest is the default
        box = _mailbox(b4, msgs)
        if source.path is None and revision is not None and revision not in box.series:
            box = _mailbox(b4, _other_revisions(b4, source, msgs, -1))  # an older one was asked for
        seen = sorted(box.series)
        if not seen:
            raise InputError(f"{source.describe()} holds no patch series ({_last_lines(log, 1) or 'no [PATCH]'})",
                             "name the series' cover letter or one of its patches")
        if revision is not None and revision not in seen:
            raise InputError(f"{source.describe()}: there is no v{revision} of the series (revisions: "
                             f"{', '.join(f'v{r}' for r in seen)})", "leave --revision out for the newest one")
        lser = box.get_series(revision=revision, codereview_trailers=True)
        if lser is None:
            raise InputError(f"{source.describe()}: b4 found no complete series ({_last_lines(log)})")
        missing = [i for i in range(1, lser.expected + 1) if lser.patches[i] is None]
        if missing:
            raise InputError(f"{source.describe()}: v{lser.revision} of the series lacks patch(es) "
                             f"{', '.join(f'{i}/{lser.expected}' for i in missing)} in the archive",
                             "wait until the whole series is archived, or give an mbox with all of it")
        am = lser.get_am_ready(addlink=source.msgid is not None)
        mbox = out / "series.mbx"
        with open(mbox, "wb") as fh:
            b4.save_git_am_mbox(am, fh)
        if lser.has_cover:
            lser.save_cover(str(out / "series.cover"))
        cover = _mail(lser.patches[0]) if lser.has_cover and lser.patches[0] is not None else None
        first = lser.patches[0] if cover else lser.patches[1]
        return Series(
            source=source.describe(), inbox=source.inbox, revision=lser.revision, revisions=seen,
            subject=lser.subject, author=email.utils.formataddr((lser.fromname, lser.fromemail)),
            author_email=lser.fromemail, cover=cover, patches=[_mail(p) for p in lser.patches[1:]],
            base_commit=lser.base_commit or _base_in(first), prerequisite_patch_ids=list(lser.prereq_patch_ids or []),
            change_id=lser.change_id, mbox=mbox)


def inbox_get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET from a public-inbox archive; an
    InputError when the server does not answer at all."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "iommufd-harness"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, ValueError) as e:
        raise InputError(f"could not fetch from the inbox {url.split('?')[0]}: it does not answer ({e})",
                         "check --inbox (the archive's list URL) and that the server is up") from None


def _answers(inbox: str | None) -> None:
    """An InputError if the archive at ``inbox`` does not answer at all (so
    a message it lacks is not blamed on the message-id); an HTTP error is
    an answer (a 404 for the list is b4's to explain)."""
    if inbox:
        inbox_get(inbox.rstrip("/") + "/", timeout=30)


def _other_revisions(b4, source: Source, msgs: list, direction: int) -> list:
    """The thread and what the archive has of the series' other revisions
    (newer with ``direction`` 1, older with -1), as ``b4 am -c`` searches."""
    try:
        return b4.mbox.get_extra_series(msgs, direction=direction, nocache=True)
    except Exception as e:  # noqa: BLE001 - liblore's errors are not one class
        raise InputError(f"searching {source.inbox} for other revisions of <{source.msgid}> failed: {e}",
                         "check that the archive answers searches (public-inbox with its search index)") from None


def _mailbox(b4, msgs: list):
    box = b4.LoreMailbox()
    for m in msgs:
        box.add_message(m)
    return box


def _base_in(lmsg) -> str | None:
    """base-commit: from a message's body (a series without a cover letter
    carries it in its patch)."""
    try:
        body = lmsg.body
    except AttributeError:
        return None
    m = re.search(r"^base-commit: *([0-9a-f]{7,40})\s*$", body or "", re.M)
    return m.group(1) if m else None

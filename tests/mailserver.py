"""Real mail servers for the gate's tests, started on this machine:

- ``Archive``: a public-inbox v2 archive (Debian's public-inbox, the
  software behind lore), mail imported with ``public-inbox-mda`` as a list
  server delivers it, served by ``public-inbox-httpd`` on 127.0.0.1;
- ``SmtpServer``: aiosmtpd on 127.0.0.1, keeping every message it is sent
  and, like a list, delivering each one to the archive too;
- ``write_series``: a series of real mail files, as ``git format-patch
  --cover-letter`` makes them of commits of a git repository.

Nothing is written outside the directories given (public-inbox's config
and emergency maildir included)."""

from __future__ import annotations

import email
import email.utils
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from email import policy
from pathlib import Path

LIST = "iommu@lists.localhost"  # the list the test series are posted to


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Archive:
    def __init__(self, root: Path, name: str = "iommu", address: str = LIST):
        self.root = root
        self.name = name
        self.address = address
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/{name}"
        self.env = {**os.environ, "PI_DIR": str(root / "pi"), "PI_CONFIG": str(root / "pi" / "config"),
                    "PI_EMERGENCY": str(root / "pi" / "emergency") + "/", "HOME": str(root / "home")}
        (root / "home").mkdir(parents=True, exist_ok=True)
        self.httpd: subprocess.Popen | None = None
        subprocess.run(["public-inbox-init", "-V2", name, str(root / "inbox"), self.url + "/", address],
                       env=self.env, check=True, capture_output=True)
        subprocess.run(["git", "config", "-f", self.env["PI_CONFIG"], "publicinboxmda.spamcheck", "none"],
                       env=self.env, check=True)

    def deliver(self, raw: bytes) -> str:
        """Import one mail as the list server would; its Message-ID."""
        msgid = email.message_from_bytes(raw, policy=policy.default)["Message-ID"].strip().strip("<>")
        # the list's MTA stamps when it received the mail (public-inbox's rt:, which the gate's
        # polls search by; without it the archive takes the Date: the author's commit date)
        received = (f"Received: from localhost by lists.localhost with SMTP id {time.monotonic_ns():x};\r\n"
                    f"\t{email.utils.formatdate()}\r\n").encode()
        head, nl, rest = raw.partition(b"\n")
        raw = head + nl + received + rest if head.startswith(b"From ") else received + raw
        res = subprocess.run(["public-inbox-mda"], input=raw, env={**self.env, "ORIGINAL_RECIPIENT": self.address},
                             capture_output=True)
        emergency = Path(self.env["PI_EMERGENCY"]) / "new"
        left = list(emergency.iterdir()) if emergency.is_dir() else []
        if res.returncode != 0 or left:  # mda says 0 even when it drops a mail into the emergency dir
            raise RuntimeError(f"public-inbox-mda did not archive <{msgid}> (exit {res.returncode}, "
                               f"{len(left)} in emergency): {res.stderr.decode(errors='replace')[-500:]}")
        return msgid

    def start(self) -> "Archive":
        log = self.root / "httpd"
        self.httpd = subprocess.Popen(
            ["public-inbox-httpd", "-W0", "-l", f"127.0.0.1:{self.port}", "-1", f"{log}.out", "-2", f"{log}.err"],
            env=self.env, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/new.atom", timeout=2):
                    return self
            except OSError:
                if self.httpd.poll() is not None:
                    raise RuntimeError(f"public-inbox-httpd exited: {(log.with_suffix('.err')).read_text()}")
                time.sleep(0.1)
        raise RuntimeError("public-inbox-httpd did not answer within 30 s")

    def thread(self, msgid: str) -> list[email.message.EmailMessage]:
        """The thread of ``msgid`` as the archive serves it."""
        import gzip
        import mailbox
        import tempfile

        with urllib.request.urlopen(f"{self.url}/{msgid}/t.mbox.gz", timeout=10) as r:
            data = gzip.decompress(r.read())
        with tempfile.NamedTemporaryFile(suffix=".mbox") as f:
            f.write(data)
            f.flush()
            return [email.message_from_bytes(m.as_bytes(), policy=policy.default) for m in mailbox.mbox(f.name)]

    def stop(self) -> None:
        if self.httpd is not None and self.httpd.poll() is None:
            os.killpg(self.httpd.pid, signal.SIGQUIT)
            try:
                self.httpd.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.httpd.pid, signal.SIGKILL)
                self.httpd.wait()


class SmtpServer:
    """aiosmtpd on 127.0.0.1: keeps what it is sent; with ``archive``, also
    delivers each message to it, as the list would."""

    def __init__(self, archive: Archive | None = None, **smtp_kwargs):
        from aiosmtpd.controller import Controller

        self.received: list[tuple[str, list[str], bytes]] = []
        self.archive = archive
        self.port = free_port()
        server = self

        class Handler:
            async def handle_DATA(self, srv, session, envelope):
                server.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
                if server.archive is not None and server.archive.address in envelope.rcpt_tos:
                    server.archive.deliver(envelope.content)
                return "250 Message accepted for delivery"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **smtp_kwargs)

    def start(self) -> "SmtpServer":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


def write_series(repo: Path, rng: str, out: Path, version: int, author: str, subject: str, blurb: str,
                 base: str | None = None, env: dict | None = None, cc: tuple[str, ...] = ()) -> list[Path]:
    """``git format-patch --cover-letter --thread`` of ``rng`` as v``version``
    To the list (Cc ``cc``), the cover letter's subject and text filled in; base-commit
    from ``base`` (``--base``).  Real mail files, in order, cover first."""
    out.mkdir(parents=True, exist_ok=True)
    argv = ["git", "-C", str(repo), "format-patch", "-q", "--cover-letter", "--thread", f"-v{version}",
            f"--to={LIST}", *(f"--cc={c}" for c in cc), "-o", str(out), f"--from={author}"]
    if base:
        argv.append(f"--base={base}")
    subprocess.run(argv + [rng], check=True, env={**os.environ, **(env or {})})
    files = sorted(out.glob("*.patch"))
    cover = next(f for f in files if "-0000-" in f.name)
    text = cover.read_text()
    text = text.replace("*** SUBJECT HERE ***", subject).replace("*** BLURB HERE ***", blurb)
    cover.write_text(text)
    time.sleep(1.1)  # format-patch's message-ids carry the second: the next series must not share them
    return files


def msgid_of(path: Path) -> str:
    m = re.search(r"^Message-ID: <([^>]+)>", path.read_text(), re.M | re.I)
    assert m, path
    return m.group(1)

"""The series as the gate takes it from a real public-inbox archive (and
from an mbox), with b4: the newest revision, the one asked for, the cover
letter, the base; and the reply, sent through a real SMTP server, in the
series' thread as the archive serves it."""

from __future__ import annotations

import email
import email.message
import email.utils
import os
import subprocess
from email import policy
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.mail import gate, reply
from harness.mail.series import fetch, parse_source
from harness.reports.results import RunRecord
from mailserver import LIST, Archive, SmtpServer, msgid_of, write_series

pytestmark = pytest.mark.mail

AUTHOR = "Alice Developer <alice@dev.localhost>"
ENV = {"GIT_AUTHOR_NAME": "Alice Developer", "GIT_AUTHOR_EMAIL": "alice@dev.localhost",
       "GIT_COMMITTER_NAME": "Alice Developer", "GIT_COMMITTER_EMAIL": "alice@dev.localhost"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **ENV}).stdout.strip()


def _commit(repo: Path, name: str, text: str, subject: str) -> str:
    (repo / name).write_text(text)
    _git(repo, "add", name)
    _git(repo, "commit", "-q", "-m", subject, "-m", f"Why {subject}: the test series needs a body.")
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tree, an archive holding v1 and v2 of a series (and a series whose
    base is not in the tree), served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mail")
    repo = root / "tree"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    base = _commit(repo, "access.c", "int access_rw(void) { return 0; }\n", "access: the start")
    _git(repo, "checkout", "-q", "-b", "v1")
    _commit(repo, "access.c", "int access_rw(void) { return 1; }\n", "access: return one")
    _commit(repo, "pin.c", "int pin(void) { return 0; }\n", "access: add pin")
    _git(repo, "checkout", "-q", "-b", "v2", "main")
    _commit(repo, "access.c", "int access_rw(void) { return 1; } /* v2 */\n", "access: return one")
    _commit(repo, "pin.c", "int pin(void) { return 0; } /* v2 */\n", "access: add pin")
    # a series on a base the tree does not have
    _git(repo, "checkout", "-q", "--orphan", "elsewhere")
    _git(repo, "rm", "-q", "-rf", ".")
    other = _commit(repo, "other.c", "int other;\n", "other: a tree of its own")
    _commit(repo, "other.c", "int other = 1;\n", "other: one")
    _git(repo, "checkout", "-q", "main")
    subject = "access: pin and return one"
    v1 = write_series(repo, "main..v1", root / "v1", 1, AUTHOR, subject, "The first try.", base, ENV)
    v2 = write_series(repo, "main..v2", root / "v2", 2, AUTHOR, subject, "Changes in v2: comments.", base, ENV,
                      cc=("Bob Reviewer <bob@rev.localhost>",))
    lost = write_series(repo, "elsewhere~1..elsewhere", root / "lost", 1, AUTHOR, "other: one", "Lost base.",
                        other, ENV)
    _git(repo, "branch", "-q", "-D", "elsewhere")
    _git(repo, "reflog", "expire", "--expire=now", "--all")
    _git(repo, "gc", "-q", "--prune=now")
    # a question on the list: a thread with no patch in it
    question = email.message.EmailMessage()
    question["From"], question["To"], question["Subject"] = AUTHOR, LIST, "iommufd: how is access_rw locked?"
    question["Message-ID"] = email.utils.make_msgid("question", "dev.localhost")
    question["Date"] = email.utils.formatdate()
    question.set_content("Which lock does iommufd_access_rw() take first?\n")
    archive = Archive(root / "archive")
    for f in v1 + v2 + lost:
        archive.deliver(f.read_bytes())
    archive.deliver(bytes(question))
    archive.start()
    yield {"root": root, "repo": repo, "base": base, "archive": archive, "v1": v1, "v2": v2, "lost": lost,
           "subject": subject, "question": question["Message-ID"].strip("<>")}
    archive.stop()


def test_a_message_id_of_v1_gives_the_newest_revision_with_its_cover_and_base(world, tmp_path):
    src = parse_source(f"<{msgid_of(world['v1'][0])}>", world["archive"].url)
    s = fetch(src, None, tmp_path / "out")
    assert (s.revision, s.revisions, s.subject) == (2, [1, 2], world["subject"])
    assert s.cover is not None and s.cover.msgid == msgid_of(world["v2"][0])
    assert [p.msgid for p in s.patches] == [msgid_of(f) for f in world["v2"][1:]]
    assert [p.subject for p in s.patches] == ["[PATCH v2 1/2] access: return one", "[PATCH v2 2/2] access: add pin"]
    assert s.author == AUTHOR and s.base_commit == world["base"]
    # what b4 made applies to the base, in order, as the v2 commits
    wt = tmp_path / "wt"
    _git(world["repo"], "worktree", "add", "-q", "--detach", str(wt), world["base"])
    _git(wt, "am", "-q", str(s.mbox))
    assert _git(wt, "log", "--format=%s", f"{world['base']}..HEAD").splitlines() == [
        "access: add pin", "access: return one"]
    assert (wt / "pin.c").read_text() == "int pin(void) { return 0; } /* v2 */\n"
    assert "Link: " + world["archive"].url in _git(wt, "log", "-1", "--format=%b")


def test_the_revision_asked_for_and_the_ways_to_name_a_series(world, tmp_path):
    v1 = msgid_of(world["v1"][0])
    s = fetch(parse_source(v1, world["archive"].url), 1, tmp_path / "a")
    assert s.revision == 1 and [p.msgid for p in s.patches] == [msgid_of(f) for f in world["v1"][1:]]
    # a link into the archive names the archive itself
    src = parse_source(f"{world['archive'].url}/{v1}/", None)
    assert (src.msgid, src.inbox) == (v1, world["archive"].url)
    assert fetch(src, None, tmp_path / "b").revision == 2
    with pytest.raises(InputError, match=r"there is no v3 of the series \(revisions: v1, v2\)"):
        fetch(parse_source(v1, world["archive"].url), 3, tmp_path / "c")
    with pytest.raises(InputError, match="has no message <nobody@nowhere.localhost>"):
        fetch(parse_source("nobody@nowhere.localhost", world["archive"].url), None, tmp_path / "d")


def test_a_local_mbox_gives_its_series(world, tmp_path):
    mbox = tmp_path / "v1.mbox"
    mbox.write_bytes(b"".join(f.read_bytes() for f in world["v1"]))
    s = fetch(parse_source(str(mbox), None), None, tmp_path / "out")
    assert s.revision == 1 and len(s.patches) == 2 and s.base_commit == world["base"]


def test_the_base_is_the_series_base_commit_else_the_tree_head_said_so(world, tmp_path):
    repo = world["repo"]
    s = fetch(parse_source(msgid_of(world["v2"][0]), world["archive"].url), None, tmp_path / "a")
    assert gate.resolve_base(repo, s, None) == (world["base"], "base-commit")
    s.base_commit = None
    assert gate.resolve_base(repo, s, None) == (_git(repo, "rev-parse", "HEAD"), "HEAD")
    assert gate.resolve_base(repo, s, "main") == (_git(repo, "rev-parse", "main"), "--base")
    lost = fetch(parse_source(msgid_of(world["lost"][0]), world["archive"].url), None, tmp_path / "b")
    with pytest.raises(InputError, match=rf"base-commit {lost.base_commit} is not in {repo}") as e:
        gate.resolve_base(repo, lost, None)
    assert "fetch" in e.value.hint


def test_the_reply_threads_under_the_cover_and_reaches_the_archive_through_smtp(world, tmp_path, golden):
    import json

    s = fetch(parse_source(msgid_of(world["v2"][0]), world["archive"].url), None, tmp_path / "a")
    run = RunRecord.from_json(json.loads((golden / "results-x86_64-vtd-full-fail.json").read_text()))
    failed = [t for t in run.tests if t.status != "pass"]
    out = reply.Outcome("fail", run, None, world["base"], "base-commit",
                        regressions=[{"name": t.name, "before": "pass", "after": t.status, "reason": t.reason}
                                     for t in failed],
                        reproduce=[f"iommufd-harness gate '<{s.cover.msgid}>' --inbox {world['archive'].url} "
                                   f"--kernel-src {world['repo']}"], results=str(tmp_path))
    cc = gate.list_cc(s)
    assert s.cover.cc == ["Bob Reviewer <bob@rev.localhost>"]
    assert cc == [LIST]  # the address the archive's List-Id names, not every Cc
    msg = reply.compose(s, out, "iommufd-harness <gate@ci.localhost>", cc)
    assert msg["Subject"] == f"Re: [PATCH v2 0/2] {world['subject']}"
    assert msg["In-Reply-To"] == f"<{s.cover.msgid}>" and msg["To"] == AUTHOR and msg["Cc"] == LIST
    text = msg.get_content()
    assert text.startswith("Hi Alice,\n\n") and "REGRESSED" in text.split("\n\n")[1]
    assert all(len(line) <= reply.WIDTH for line in text.splitlines()), max(text.splitlines(), key=len)
    assert failed[0].name in text and "gate" in text and world["base"][:12] in text
    # sent to a real SMTP server that delivers to the list: the archive shows it in the thread
    smtp = SmtpServer(world["archive"]).start()
    try:
        sent = gate.send(msg, f"127.0.0.1:{smtp.port}", None)
    finally:
        smtp.stop()
    assert sent == f"127.0.0.1:{smtp.port}"
    [(mail_from, rcpts, raw)] = smtp.received
    assert sorted(rcpts) == sorted([AUTHOR.split("<")[1].rstrip(">"), LIST])
    thread = world["archive"].thread(s.cover.msgid)
    mine = [m for m in thread if m["Message-ID"].strip() == msg["Message-ID"]]
    assert mine and mine[0]["In-Reply-To"].strip() == f"<{s.cover.msgid}>", ([m["Message-ID"] for m in thread],
                                                                       msg["Message-ID"])


def test_a_reply_over_several_machines_has_a_section_per_machine_in_the_order_run(world, tmp_path, golden):
    """One cell regressed, one gave no verdict: the series FAILs (a
    regression is a verdict), and each cell says its own, in order."""
    import json

    s = fetch(parse_source(msgid_of(world["v2"][0]), world["archive"].url), None, tmp_path / "a")
    fail = RunRecord.from_json(json.loads((golden / "results-x86_64-vtd-full-fail.json").read_text()))
    broken = RunRecord.from_json(json.loads((golden / "results-arm64-smmuv3-access-build-error.json").read_text()))
    failed = [t for t in fail.tests if t.status != "pass"]
    cells = [reply.Cell("x86_64-vtd", "full", "fail", fail, None,
                        [{"name": t.name, "before": "pass", "after": t.status, "reason": t.reason} for t in failed]),
             reply.Cell("arm64-smmuv3", "access", "error", broken, None, error=broken.errors[0].splitlines()[0])]
    out = reply.Outcome("fail", fail, None, world["base"], "base-commit", cells=cells)
    text = reply.compose(s, out, "ci <ci@ci.localhost>", []).get_content()
    heads = [ln for ln in text.splitlines() if ln.endswith(("FAIL (regressed)", "ERROR (no verdict)"))
             and "suite" in ln]
    assert heads == ["x86_64-vtd, suite full: FAIL (regressed)", "arm64-smmuv3, suite access: ERROR (no verdict)"]
    x86, arm = text.split(heads[0])[1].split(heads[1])
    assert failed[0].name in x86 and failed[0].name not in arm
    assert "error:" in arm and "build" in arm.lower()
    assert "REGRESSED" in text.split("\n\n")[1]
    assert all(len(line) <= reply.WIDTH for line in text.splitlines()), max(text.splitlines(), key=len)


def _gate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    import sys

    repo_root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "harness", "gate", "--work", str(tmp_path / "work"), *args],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)


def test_a_series_whose_base_is_not_in_the_tree_is_no_verdict_and_mails_nobody(world, tmp_path):
    """Exit 2 naming the commit and how to fetch it, before anything is
    built; series.json says what was fetched; the author is not mailed, and
    with --reply-on-error the reply says the series was not tested."""
    lost = msgid_of(world["lost"][0])
    smtp = SmtpServer().start()
    try:
        res = _gate(tmp_path, lost, "--inbox", world["archive"].url, "--kernel-src", str(world["repo"]),
                    "--results", str(tmp_path / "r"), "--smtp", f"127.0.0.1:{smtp.port}")
        assert res.returncode == 2, res.stderr
        assert "base-commit" in res.stderr and "is not in" in res.stderr and "git -C" in res.stderr
        assert "Traceback" not in res.stderr and smtp.received == []
        info = __import__("json").loads((tmp_path / "r" / "series.json").read_text())
        assert info["series"]["message_ids"][0] == lost and info["base"] is None
        res = _gate(tmp_path, lost, "--inbox", world["archive"].url, "--kernel-src", str(world["repo"]),
                    "--results", str(tmp_path / "r2"), "--smtp", f"127.0.0.1:{smtp.port}", "--reply-on-error",
                    "--reply-to", str(tmp_path / "reply.eml"))
        assert res.returncode == 2, res.stderr
        [(_, rcpts, raw)] = smtp.received
    finally:
        smtp.stop()
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["In-Reply-To"] == f"<{lost}>" and msg["X-Iommufd-Harness-Verdict"] == "error"
    words = " ".join(msg.get_content().split())
    assert "could not test" in words and "This says nothing about the series." in words
    assert (tmp_path / "reply.eml").read_bytes() == (tmp_path / "r2" / "reply.eml").read_bytes()


def test_the_gate_config_and_its_refusals(tmp_path):
    """[gate] keys as a maintainer writes them; a password is never read
    from the file; unknown keys are named."""
    cfg = tmp_path / "iommufd-gate.toml"
    cfg.write_text('[gate]\ninbox = "http://127.0.0.1:1/iommu"\ndebug = []\ncc = ["m@x.localhost"]\n'
                   '[gate.smtp]\nhost = "127.0.0.1"\nport = 2525\nstarttls = true\nuser = "ci"\n'
                   'password_env = "GATE_PW"\n')
    c = gate.load_config(None, tmp_path)  # found next to the tree
    assert (c.inbox, c.debug, c.cc, c.smtp.port, c.smtp.starttls) == ("http://127.0.0.1:1/iommu", (),
                                                                        ["m@x.localhost"], 2525, True)
    assert gate.load_config(None, tmp_path / "elsewhere").path is None  # none: the defaults
    cfg.write_text('[gate]\n[gate.smtp]\nhost = "h"\npassword = "secret"\n')
    with pytest.raises(InputError, match="password is not read from a file"):
        gate.load_config(cfg, None)
    cfg.write_text('[gate]\nprofiles = ["x86_64-vtd", "arm64-smmuv3"]\nsuite = "access"\n')
    c = gate.load_config(cfg, None)
    assert (c.profiles, c.suites) == (["x86_64-vtd", "arm64-smmuv3"], ["access"])
    cfg.write_text('[gate]\nprofile = "x86_64-vtd"\nprofiles = ["arm64-smmuv3"]\n')
    with pytest.raises(InputError, match="both profile and profiles"):
        gate.load_config(cfg, None)
    cfg.write_text('[gate]\nmachines = ["x86_64-vtd"]\n')
    with pytest.raises(InputError, match=r"unknown key\(s\) machines in \[gate\]"):
        gate.load_config(cfg, None)
    assert gate.GATE_DEBUG == ("kasan", "kmemleak", "lockdep")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp_path / "server.crt", tmp_path / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def test_the_reply_goes_through_starttls_and_a_login_whose_password_comes_from_the_environment(
        world, tmp_path, monkeypatch):
    import ssl

    from aiosmtpd.smtp import AuthResult

    crt, pem = _self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, pem)
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=(auth_data.login, auth_data.password) == (b"ci", b"s3cret"))

    smtp = SmtpServer(tls_context=ctx, require_starttls=True, auth_required=True, authenticator=authenticator)
    smtp.start()
    s = fetch(parse_source(msgid_of(world["v2"][0]), world["archive"].url), None, tmp_path / "a")
    msg = reply.compose(s, reply.Outcome("pass", None, None, world["base"], "base-commit"), "ci <ci@ci.localhost>",
                        [])
    cfg = gate.Smtp(host="127.0.0.1", port=smtp.port, starttls=True, user="ci", password_env="GATE_PW",
                    cafile=str(crt))
    try:
        monkeypatch.delenv("GATE_PW", raising=False)
        with pytest.raises(InputError, match="the variable GATE_PW is not set"):
            gate.send(msg, "127.0.0.1", cfg)
        monkeypatch.setenv("GATE_PW", "s3cret")
        assert gate.send(msg, "127.0.0.1", cfg) == f"127.0.0.1:{smtp.port}"
        # without STARTTLS the server refuses to take it at all
        with pytest.raises(gate.HarnessError, match=f"sending the reply through 127.0.0.1:{smtp.port} failed"):
            gate.send(msg, f"127.0.0.1:{smtp.port}", None)
    finally:
        smtp.stop()
    assert logins == [(b"ci", b"s3cret")] and len(smtp.received) == 1


def test_prerequisites_are_found_in_the_base_history_or_refused(world):
    repo = world["repo"]
    show = subprocess.run(["git", "-C", str(repo), "show", "v1~1"], capture_output=True, check=True).stdout
    pid = subprocess.run(["git", "-C", str(repo), "patch-id", "--stable"], input=show, capture_output=True,
                         check=True).stdout.split()[0].decode()
    tip = _git(repo, "rev-parse", "v1")
    assert gate.prerequisites(repo, tip, [pid]) == [{"patch_id": pid, "commit": _git(repo, "rev-parse", "v1~1")}]
    with pytest.raises(InputError, match=f"prerequisite patch\\(es\\) {'0' * 40} that the base"):
        gate.prerequisites(repo, tip, ["0" * 40])
    assert gate.prerequisites(repo, world["base"], []) == []


def _poll(tmp_path: Path, world, *args: str) -> subprocess.CompletedProcess:
    return _gate(tmp_path, "--new", "--inbox", world["archive"].url, "--kernel-src", str(world["repo"]),
                 "--state", str(tmp_path / "state.json"), "--debug", "", *args)


def test_new_lists_each_series_revision_posted_since_and_changes_nothing(world, tmp_path):
    """--list: the cover letters of v1, v2 and the lost-base series (their
    patches are not series of their own), oldest first; no state written."""
    res = _poll(tmp_path, world, "--list")
    assert res.returncode == 0, res.stderr
    listed = [line.split("<")[1].split(">")[0] for line in res.stderr.splitlines() if line.startswith("      v")]
    assert listed == [msgid_of(world[k][0]) for k in ("v1", "v2", "lost")]
    assert "3 series revision(s) posted since" in res.stderr and "3 to gate" in res.stderr
    assert not (tmp_path / "state.json").exists()
    tomorrow = (__import__("datetime").date.today() + __import__("datetime").timedelta(days=1)).isoformat()
    res = _poll(tmp_path, world, "--list", "--since", tomorrow)
    assert res.returncode == 0 and "0 series revision(s)" in res.stderr, res.stderr


def test_new_gates_each_revision_once_and_one_without_a_verdict_three_times_mailing_once(world, tmp_path):
    """Poll 1 gates v1's cover as its newest revision, v2 (so v2 is not gated
    again in that poll) and the lost-base series: neither has a verdict here
    (the tree is no kernel; the base is missing), each mails its author once
    (--reply-on-error).  Polls 2 and 3 try both again without mailing; poll 4
    has nothing to gate."""
    import json

    smtp = SmtpServer().start()
    v1, v2, lost = (msgid_of(world[k][0]) for k in ("v1", "v2", "lost"))
    try:
        for poll in (1, 2, 3, 4):
            res = _poll(tmp_path, world, "--results", str(tmp_path / f"poll{poll}"), "--reply-on-error",
                        "--smtp", f"127.0.0.1:{smtp.port}")
            assert "Traceback" not in res.stderr
            state = json.loads((tmp_path / "state.json").read_text())
            if poll < 4:
                assert res.returncode == 2, res.stderr
                assert state["series"][v2]["attempts"] == poll and state["series"][lost]["attempts"] == poll
                assert state["series"][v1] == {**state["series"][v1], "superseded_by": v2}
                assert state["seen"][msgid_of(world["v2"][1])] == v2
                gated = json.loads((tmp_path / f"poll{poll}" / "poll.json").read_text())["gated"]
                assert [(g["message_id"], g["gated_as"], g["verdict"]) for g in gated] == [
                    (v1, v2, "error"), (lost, lost, "error")]
                assert "is not a Linux kernel tree" in state["series"][v2]["error"]
                assert "is not in" in state["series"][lost]["error"]
            else:
                assert res.returncode == 0 and "0 to gate" in res.stderr, res.stderr
            assert sorted(m[2].split(b"In-Reply-To: ")[1].split(b"\r\n")[0].strip(b"<>").decode()
                          for m in smtp.received) == sorted([v2, lost]), f"poll {poll}"
    finally:
        smtp.stop()


def test_new_refuses_a_second_poll_of_the_same_state_and_a_series_with_it(world, tmp_path):
    from harness.mail import watch

    with watch.polling(tmp_path / "state.json"):
        res = _poll(tmp_path, world)
    assert res.returncode == 2 and "another 'gate --new' is polling" in res.stderr, res.stderr
    res = _gate(tmp_path, "--new", msgid_of(world["v1"][0]), "--kernel-src", str(world["repo"]))
    assert res.returncode == 2 and "not both" in res.stderr
    res = _gate(tmp_path, "--since", "3d", msgid_of(world["v1"][0]), "--kernel-src", str(world["repo"]))
    assert res.returncode == 2 and "go with --new" in res.stderr


def _refusing_smtp():
    """A real SMTP server that refuses every recipient (550)."""
    from aiosmtpd.controller import Controller

    from mailserver import free_port

    class Refuse:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            return "550 5.1.1 no such user here"

    port = free_port()
    ctl = Controller(Refuse(), hostname="127.0.0.1", port=port)
    ctl.start()
    return ctl, port


@pytest.mark.parametrize("case", ["unknown message-id", "no patches in the thread", "unreachable inbox",
                                  "refusing smtp"])
def test_bad_input_is_a_clear_error_exit_2_and_no_mail(world, tmp_path, case):
    """Each: exit 2, a message naming what is wrong and what to do, no
    traceback, nobody mailed; with --new, nothing recorded as gated."""
    from mailserver import free_port

    smtp = SmtpServer().start()
    refusing, rport = _refusing_smtp()
    inbox, series, extra = world["archive"].url, msgid_of(world["v2"][0]), ["--smtp", f"127.0.0.1:{smtp.port}"]
    if case == "unknown message-id":
        series = "no-such-series@nowhere.localhost"
    elif case == "no patches in the thread":
        series = world["question"]
    elif case == "unreachable inbox":
        inbox = f"http://127.0.0.1:{free_port()}/iommu"
    else:  # the lost series has no verdict; --reply-on-error makes it mail, and the server refuses
        series, extra = msgid_of(world["lost"][0]), ["--smtp", f"127.0.0.1:{rport}", "--reply-on-error"]
    try:
        res = _gate(tmp_path, series, "--inbox", inbox, "--kernel-src", str(world["repo"]), "--results",
                    str(tmp_path / "r"), *extra)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and "error" in res.stderr and "hint:" in res.stderr, res.stderr
        expect = {"unknown message-id": "has no message <no-such-series@nowhere.localhost>",
                  "no patches in the thread": "holds no patch series",
                  "unreachable inbox": "could not fetch",
                  "refusing smtp": "refused recipient"}[case]
        assert expect in res.stderr, res.stderr
        assert smtp.received == []
        if case == "refusing smtp":  # the reply is kept, to send by hand
            assert (tmp_path / "r" / "reply.eml").is_file() and "send it by hand" in res.stderr
        if case == "unreachable inbox":
            res = _gate(tmp_path, "--new", "--inbox", inbox, "--kernel-src", str(world["repo"]), "--state",
                        str(tmp_path / "state.json"))
            assert res.returncode == 2 and "does not answer" in res.stderr and "Traceback" not in res.stderr
            assert not (tmp_path / "state.json").exists()
    finally:
        smtp.stop()
        refusing.stop()


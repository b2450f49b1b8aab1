"""The gate on the mailing list, on the real kernel: a series posted to a
real public-inbox archive (served on 127.0.0.1), fetched by its message-id
with b4, built and booted on its base-commit in a git tree of the kernel,
compared with the tree without it, and answered in its thread through a
real SMTP server that delivers to the list.

The series are this project's own commits in the git tree of test_trees
(``series``: a harmless comment, then the regression of
pin-more-than-8-pages-fails.patch), as ``git format-patch --cover-letter``
makes them: v1 has both, v2 only the harmless one; v1 is gated with
--revision 1 (FAIL, and the walk names its second patch), then v1's message-id alone gives v2 (on two machines); then ``gate --new``,
polling the list twice, gates the series once (as v2).  The gate config keeps
the default kernel, so the base run is the one test_trees' compare-base
run caches."""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
from email import policy
from pathlib import Path

import pytest

from mailserver import LIST, Archive, SmtpServer, msgid_of, write_series
from test_trees import BROKEN, GIT_ENV, REPO, WORK, make_repo

pytestmark = [pytest.mark.slow, pytest.mark.mail]

AUTHOR = "Alice Developer <alice@dev.localhost>"
# Alice posts the project's commits (their author stays in the patches' in-body From)
POSTER = {**GIT_ENV, "GIT_COMMITTER_NAME": "Alice Developer", "GIT_COMMITTER_EMAIL": "alice@dev.localhost"}
SUBJECT = "iommufd: comment main.c, limit access pins"


def _gate(tmp_path: Path, name: str, *args: str) -> tuple[int, str, Path]:
    results = tmp_path / name
    argv = [sys.executable, "-m", "harness", "gate", "--work", str(WORK), "--results", str(results), *args]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=3600)
    sys.stdout.write(res.stdout[-20000:])
    sys.stderr.write(res.stderr[-20000:])
    return res.returncode, res.stdout + res.stderr, results


def _unapplied(repo: Path) -> str:
    """A branch whose last commit does not apply to main without the one
    before it (its context is that commit's line); made once."""
    have = subprocess.run(["git", "-C", str(repo), "rev-parse", "-q", "--verify", "refs/heads/unapplied"],
                          capture_output=True, text=True)
    if have.returncode == 0:
        return "unapplied~1..unapplied"
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True,  # noqa: E731
                                    env={**os.environ, **GIT_ENV})
    git("checkout", "-q", "-b", "unapplied", "main")
    main_c = repo / "drivers/iommu/iommufd/main.c"
    try:
        for line in ("/* iommufd-harness: first */", "/* iommufd-harness: second */"):
            text = main_c.read_text().replace("/* iommufd-harness: first */\n", "")
            main_c.write_text(text + line + "\n")
            git("commit", "-q", "-am", f"iommufd: {line[20:-3]} comment")
    finally:
        git("checkout", "-q", "main")
    return "unapplied~1..unapplied"


def test_the_gate_answers_each_revision_of_a_series_in_its_thread(tmp_path):
    repo = make_repo(WORK / "e2e" / "linux-git")
    v1 = write_series(repo, "main..series", tmp_path / "mail-v1", 1, AUTHOR, SUBJECT, "Two changes.", "main", POSTER)
    v2 = write_series(repo, "main..series~1", tmp_path / "mail-v2", 2, AUTHOR, SUBJECT, "Only the comment.",
                      "main", POSTER)
    # a patch that needs a commit main does not have, posted without a base-commit
    # (so the gate takes the tree's HEAD, main)
    stale = write_series(repo, _unapplied(repo), tmp_path / "mail-stale", 1, AUTHOR, "iommufd: a stale comment",
                         "Written on a tree you do not have.", None, POSTER)
    archive = Archive(tmp_path / "archive")
    # every series before the server starts: public-inbox-httpd's search sees
    # mail that arrives later only when it reopens its index (about 30 s)
    for f in v1 + v2 + stale:
        archive.deliver(f.read_bytes())
    archive.start()
    smtp = SmtpServer(archive).start()
    config = tmp_path / "gate.toml"
    config.write_text(f'[gate]\ninbox = "{archive.url}"\ndebug = []\nfrom = "iommufd-harness <gate@ci.localhost>"\n')
    common = ["--kernel-src", str(repo), "--gate-config", str(config), "--smtp", f"127.0.0.1:{smtp.port}"]
    try:
        # a series that does not apply on its base: no verdict, nobody mailed
        code, out, results = _gate(tmp_path, "stale", msgid_of(stale[0]), *common)
        assert code == 2 and "does not apply" in out and "Traceback" not in out, out
        assert smtp.received == [] and json.loads((results / "series.json").read_text())["gate"]["verdict"] == "error"

        code, out, results = _gate(tmp_path, "v1", msgid_of(v1[0]), "--revision", "1", *common)
        assert code == 1, out
        data = json.loads((results / "results.json").read_text())
        cmp_ = json.loads((results / "comparison.json").read_text())
        assert {c["name"] for c in cmp_["regressions"]} == BROKEN
        info = json.loads((results / "series.json").read_text())
        main = subprocess.run(["git", "-C", str(repo), "rev-parse", "main"], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert (info["series"]["revision"], info["series"]["revisions"]) == (1, [1, 2])
        assert (info["base"]["commit"], info["base"]["how"]) == (main, "base-commit")
        assert info["series"]["message_ids"] == [msgid_of(f) for f in v1]
        assert data["inputs"]["rev"] == main and data["base"]["verdict"] == "pass"
        assert info["gate"]["verdict"] == "fail" and info["gate"]["reply"]["sent"] == f"127.0.0.1:{smtp.port}"
        # the reply, in the thread as the archive serves it; a second one under the patch that broke it
        [(_, rcpts, raw), (_, prcpts, praw)] = smtp.received
        assert sorted(rcpts) == ["alice@dev.localhost", LIST]
        thread = archive.thread(msgid_of(v1[0]))
        [mine] = [m for m in thread if m["Message-ID"].strip() == info["gate"]["reply"]["message_id"].join("<>")]
        assert mine["In-Reply-To"].strip() == f"<{msgid_of(v1[0])}>"
        assert mine["Subject"].strip() == f"Re: [PATCH v1 0/2] {SUBJECT}"
        text = email.message_from_bytes(raw, policy=policy.default).get_content()
        if os.environ.get("IOMMUFD_HARNESS_CAPTURE_REPLY"):  # docs/gate-reply.txt is made this way
            Path(os.environ["IOMMUFD_HARNESS_CAPTURE_REPLY"]).write_bytes(
                b"\n\n".join(m.replace(b"\r\n", b"\n") for m in (raw, praw)))
        assert "REGRESSED" in " ".join(text.split()) and f"base:    {main[:12]} (its base-commit)" in text
        assert all(f"  {n}: pass -> fail" in text for n in BROKEN)
        assert "iommufd-harness gate" in text and str(results) in text
        assert all(len(line) <= 72 for line in text.splitlines())
        assert 'The first patch that breaks it is 2/2: "[PATCH v1 2/2]' in " ".join(text.split())
        # which patch: the walk ran only step 1 (the comment); the base and the whole series were the gate's runs
        walk = info["walk"]
        assert (walk["first_broken"]["patch"], walk["first_broken"]["message_id"]) == (2, msgid_of(v1[2]))
        assert sorted(p.name for p in (results / "walk").glob("step-*")) == ["step-01"]
        under = email.message_from_bytes(praw, policy=policy.default)
        assert sorted(prcpts) == sorted(rcpts) and under["In-Reply-To"].strip() == f"<{msgid_of(v1[2])}>"
        assert under["Subject"].strip() == "Re: " + email.message_from_bytes(v1[2].read_bytes(), policy=policy.default)["Subject"].strip()
        ptext = under.get_content()
        assert "2/2, is the first that breaks it" in " ".join(ptext.split())
        assert all(n in ptext for n in BROKEN) and all(len(line) <= 72 for line in ptext.splitlines())
        assert info["gate"]["patch_reply"]["message_id"] in {m["Message-ID"].strip("<> ") for m in thread}
        kept = email.message_from_bytes((results / "reply.eml").read_bytes(), policy=policy.default)
        assert kept["Message-ID"].strip() == mine["Message-ID"].strip() and kept.get_content() == text.replace("\r\n", "\n")

        # v2 drops the regression: named by v1's message-id, the gate takes the newest revision;
        # on two machines, each with a section in the reply
        code, out, results = _gate(tmp_path, "v2", msgid_of(v1[0]), *common,
                                   "--profiles", "x86_64-vtd,x86_64-virtio-iommu")
        assert code == 0, out
        info = json.loads((results / "series.json").read_text())
        assert [(c["profile"], c["verdict"]) for c in info["cells"]] == [("x86_64-vtd", "pass"),
                                                                        ("x86_64-virtio-iommu", "pass")]
        assert all((results / f"{p}-access" / "results.json").is_file() for p in ("x86_64-vtd", "x86_64-virtio-iommu"))
        assert (results / "merged.json").is_file() and (results / "summary.md").is_file()
        assert (info["series"]["revision"], info["series"]["revisions"]) == (2, [1, 2])
        assert info["series"]["message_ids"] == [msgid_of(f) for f in v2]
        assert "base: cached" in out  # the same base as v1's: not run again
        assert len(smtp.received) == 3  # a pass has one reply
        msg = email.message_from_bytes(smtp.received[2][2], policy=policy.default)
        assert msg["In-Reply-To"] == f"<{msgid_of(v2[0])}>" and msg["X-Iommufd-Harness-Verdict"] == "pass"
        assert "no regression against its base" in " ".join(msg.get_content().split())
        assert [ln for ln in msg.get_content().splitlines() if ln.endswith(": PASS") and ", suite " in ln] == [
            "x86_64-vtd, suite access: PASS", "x86_64-virtio-iommu, suite access: PASS"]

        # a cron job polling the list: the first poll gates the series once (v1's cover, gated
        # as v2; v2's cover is not gated again), the second finds nothing new
        poll = [*common, "--new", "--state", str(tmp_path / "state.json")]
        # (the stale series has no verdict: exit 2, and the next poll tries it again)
        code, out, results = _gate(tmp_path, "poll1", *poll)
        assert code == 2, out
        gated = json.loads((results / "poll.json").read_text())["gated"]
        assert [(g["message_id"], g["gated_as"], g["verdict"], g["revision"]) for g in gated] == [
            (msgid_of(v1[0]), msgid_of(v2[0]), "pass", 2), (msgid_of(stale[0]), msgid_of(stale[0]), "error", 1)]
        assert len(smtp.received) == 4
        assert email.message_from_bytes(smtp.received[3][2])["In-Reply-To"] == f"<{msgid_of(v2[0])}>"
        code, out, results = _gate(tmp_path, "poll2", *poll)
        assert code == 2 and "1 to gate" in out, out
        gated = json.loads((results / "poll.json").read_text())["gated"]
        assert [(g["message_id"], g["attempts"]) for g in gated] == [(msgid_of(stale[0]), 2)]
        assert len(smtp.received) == 4
    finally:
        smtp.stop()
        archive.stop()

"""``gate SERIES``: a series from the list (or an mbox), on its base, on the
gate's kernel, against the same tree without it; the verdict as a reply in
the series' thread.

The steps, each with its own failure: the series (b4), the base
(``base-commit:``, ``--base`` or the tree's HEAD), the prerequisites, the
run (``run --compare-base`` on the debug kernel), the reply (written with
``--reply-to``, sent with ``--smtp``).  Everything goes in one results dir:
the run's files, ``series/`` (the mbox b4 made, its log), ``series.json``,
and ``reply.eml`` as it was written or sent."""

from __future__ import annotations

import json
import os
import shlex
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from harness import proc, profiles, suites
from harness.errors import EXIT_ERROR, EXIT_FAIL, EXIT_PASS, HarnessError, InputError
from harness.mail import reply as replies
from harness.mail.config import GateConfig, Smtp, load_config  # noqa: F401 - the gate's config, re-exported
from harness.mail.series import Series, fetch, parse_source
from harness.options import MachineSpec, Options, TestPlan
from harness.pipeline import results_dir_for
from harness.reports.results import RunRecord
from harness.stages import source
from harness.ui import Ui
from harness.workdir import WorkDir, WorkLock

GATE_DEBUG = ("kasan", "kmemleak", "lockdep")  # what the gate runs unless told otherwise: the detectors' kernel
PATCH_ID_DEPTH = 2000  # how far back from the base prerequisites are looked for


@dataclass
class GateRequest:
    series: str
    inbox: str | None = None
    revision: int | None = None
    base: str | None = None
    reply_to: Path | None = None
    smtp: str | None = None
    reply_on_error: bool = False
    cc: list[str] = field(default_factory=list)
    sender: str | None = None
    config: Path | None = None
    walk: bool = True  # a failed series of several patches: which patch broke it
    profiles: list[str] = field(default_factory=list)  # --profiles A,B (else the config's, else --profile)
    suites: list[str] = field(default_factory=list)  # --suites A,B


def resolve_base(tree: Path, series: Series, base: str | None) -> tuple[str, str]:
    """(commit, how): the series' base-commit, else --base, else HEAD."""
    if series.base_commit:
        try:
            return source.resolve(tree, series.base_commit), "base-commit"
        except HarnessError:
            raise InputError(f"the series' base-commit {series.base_commit} is not in {tree}",
                             f"fetch it into the tree (git -C {tree} fetch REMOTE {series.base_commit}) and gate "
                             "again") from None
    if base:
        return source.resolve(tree, base), "--base"
    return source.resolve(tree, "HEAD"), "HEAD"


def prerequisites(tree: Path, base: str, patch_ids: list[str]) -> list[dict]:
    """Each prerequisite-patch-id the series names, with the commit of the
    base's history (its last PATCH_ID_DEPTH commits) that has it; a missing
    one is an input error: the series would not apply, or would test
    something else."""
    if not patch_ids:
        return []
    log = source.git(tree, "log", "-p", "--no-merges", f"-n{PATCH_ID_DEPTH}", base,
                     what="reading the base's history for prerequisites")
    res = proc.run(["git", "-C", str(tree), "patch-id", "--stable"], stdin_text=log, timeout=600,
                   split_stderr=True, error=InputError, what="git patch-id over the base's history")
    have = {}
    for line in res.output.splitlines():
        pid, commit = (line.split() + ["", ""])[:2]
        have.setdefault(pid, commit)
    missing = [p for p in patch_ids if p not in have]
    if missing:
        raise InputError(f"the series needs prerequisite patch(es) {', '.join(missing)} that the base "
                         f"{base[:12]} does not have (in its last {PATCH_ID_DEPTH} commits)",
                         "apply them to the tree (b4 shazam fetches them with the series) and give --base, "
                         "or gate the series they belong to first")
    return [{"patch_id": p, "commit": have[p]} for p in patch_ids]


def list_cc(series: Series) -> list[str]:
    """The list the series was posted to: its addresses whose List-Id the
    archive stamped on the message (list@host is <list.host>)."""
    first = series.first
    ids = {i.strip("<> ").lower() for i in first.list_ids}
    out = []
    for addr in first.to + first.cc:
        mail = addr[addr.rfind("<") + 1:].rstrip(">") if "<" in addr else addr
        if mail.replace("@", ".").lower() in ids:
            out.append(addr)
    return out


def send(msg, server: str, cfg: Smtp | None) -> str:
    """Send ``msg`` through ``server`` (HOST[:PORT]; STARTTLS and login from
    the config's [gate.smtp] when it names the same host)."""
    host, _, port = server.rpartition(":") if ":" in server else (server, "", "")
    port_n = int(port) if port else (cfg.port if cfg and cfg.host == host else 25)
    smtp_cfg = cfg if cfg and cfg.host == host else None
    rcpts = [a for h in ("To", "Cc") for a in [x.strip() for x in str(msg.get(h, "")).split(",")] if a]
    try:
        with smtplib.SMTP(host, port_n, timeout=60) as s:
            if smtp_cfg and smtp_cfg.starttls:
                s.starttls(context=ssl.create_default_context(cafile=smtp_cfg.cafile))
            if smtp_cfg and smtp_cfg.user:
                password = os.environ.get(smtp_cfg.password_env or "")
                if password is None:
                    raise InputError(f"[gate.smtp] user {smtp_cfg.user} needs a password: the variable "
                                     f"{smtp_cfg.password_env or '(password_env not set)'} is not set")
                s.login(smtp_cfg.user, password)
            refused = s.send_message(msg, to_addrs=rcpts)
    except smtplib.SMTPRecipientsRefused as e:
        why = "; ".join(f"{a}: {code} {text.decode(errors='replace')}" for a, (code, text) in e.recipients.items())
        raise HarnessError(f"{host}:{port_n} refused recipient(s) {why}",
                           "the reply is in the results dir (reply.eml); send it by hand or gate again") from None
    except (OSError, smtplib.SMTPException) as e:
        raise HarnessError(f"sending the reply through {host}:{port_n} failed: {e}",
                           "the reply is in the results dir (reply.eml); send it by hand or gate again") from None
    if refused:
        raise HarnessError(f"{host}:{port_n} refused recipient(s) {', '.join(refused)}")
    return f"{host}:{port_n}"


def _setup(req: GateRequest, opts: Options) -> tuple[Options, GateConfig, Path, list[tuple[str, str]]]:
    """The gate's options (the tree, its config, the gate's kernel) and its
    cells (profile, suite): --profiles/--suites, else the config's, else
    --profile/--suite; checked."""
    if opts.kernel.patches or opts.kernel.commits or opts.kernel.rev:
        raise InputError("gate takes the series from SERIES: --patches, --commits and --rev do not apply",
                         "use 'run' to test patches of your own")
    if opts.kernel.kernel_src is None or not (Path(opts.kernel.kernel_src).expanduser() / ".git").exists():
        raise InputError("gate needs --kernel-src: the git tree the series is for",
                         "give the tree the series was written against (its base-commit must be in it)")
    tree = Path(opts.kernel.kernel_src).expanduser().resolve()
    cfg = load_config(req.config, tree)
    names = req.profiles or (cfg.profiles if opts.machine.profile == MachineSpec.profile else []) or [opts.machine.profile]
    tests = req.suites or (cfg.suites if opts.testing.suite == TestPlan.suite else []) or [opts.testing.suite]
    cells = [(p, t) for p in dict.fromkeys(names) for t in dict.fromkeys(tests)]
    opts = opts.but(kernel_src=tree, profile=cells[0][0], suite=cells[0][1],
                               debug=opts.kernel.debug or (cfg.debug if cfg.debug is not None else GATE_DEBUG),
                               compare_base=True)
    for name in dict.fromkeys(names):
        profiles.load(name)
    for name in dict.fromkeys(tests):
        suites.load(name)
    return opts, cfg, tree, cells


def gate(req: GateRequest, opts: Options, ui: Ui) -> int:
    opts, cfg, tree, cells = _setup(req, opts)
    return _gate_series(req, opts, cfg, tree, cells, ui)[0]


def _gate_series(req: GateRequest, opts: Options, cfg: GateConfig, tree: Path, cells: list[tuple[str, str]],
                 ui: Ui) -> tuple[int, dict]:
    """Gate one series: (exit code, what series.json says)."""
    from harness.jobs import run_one, validate

    work = WorkDir(opts.work).prepare()
    results = results_dir_for(opts, work, "gate")
    results.mkdir(parents=True, exist_ok=True)
    src = parse_source(req.series, req.inbox or cfg.inbox)
    ui.stage("series")
    series = fetch(src, req.revision, results / "series")
    ui.info(f"v{series.revision} of \"{series.subject}\" by {series.author}: {len(series.patches)} patch(es)"
            + (", with a cover letter" if series.cover else "") + f" (revisions seen: "
            f"{', '.join(f'v{r}' for r in series.revisions)})")
    info = {"series": series.to_json(), "base": None, "prerequisites": [], "gate": {}, "results": str(results)}

    def save() -> None:
        (results / "series.json").write_text(json.dumps(info, indent=2) + "\n")

    save()
    outcome = None
    try:
        base, how = resolve_base(tree, series, req.base)
        info["base"] = {"commit": base, "how": how, "describe": source.describe(tree, base)}
        ui.info(f"base: {base[:12]} ({'from the series' if how == 'base-commit' else how})")
        info["prerequisites"] = prerequisites(tree, base, series.prerequisite_patch_ids)
        save()
        ropts = opts.but(rev=base, patches=[series.mbox], results=results)
        validate(ropts)
        ran: list[tuple[replies.Cell, RunRecord, Options]] = []
        with WorkLock(work):
            for profile, suite in cells:
                copts = ropts.but(profile=profile, suite=suite)
                where = results if len(cells) == 1 else results / f"{profile}-{suite}"
                copts = copts.but(results=where)
                if len(cells) > 1:
                    ui.stage(f"{profile}, suite {suite}")
                record, interrupted = run_one(copts, ui, where)
                if interrupted:
                    raise KeyboardInterrupt
                ran.append((_cell(record, profile, suite, where), record, copts))
        verdicts = [c.verdict for c, _, _ in ran]
        verdict = "fail" if "fail" in verdicts else ("error" if "error" in verdicts else "pass")
        first_cell = ran[0][0]
        outcome = replies.Outcome(
            verdict=verdict, run=first_cell.run, base=first_cell.base, base_commit=base, base_how=how,
            regressions=first_cell.regressions, disappeared=first_cell.disappeared,
            error=next((c.error for c, _, _ in ran if c.error), "") if verdict == "error" else "",
            reproduce=[_reproducer(req, src, opts, tree, cells)], results=str(results),
            cells=[c for c, _, _ in ran] if len(ran) > 1 else [])
        if len(ran) > 1:
            info["cells"] = [{"profile": c.profile, "suite": c.suite, "verdict": c.verdict, "results": c.results}
                             for c, _, _ in ran]
            _merge(results, ui)
        failed = next(((c, r, o) for c, r, o in ran if c.verdict == "fail"), None)
        if failed and len(series.patches) > 1 and req.walk and failed[1].base:
            cell, record, copts = failed
            info["walk"] = _which_patch(copts, series, Path(record.base["results"]), Path(cell.results), ui)
            save()
            first = (info["walk"] or {}).get("first_broken")
            if first:
                outcome.first_bad = (first["patch"], series.patches[first["patch"] - 1].subject)
                outcome.first_bad_broke = list(first["broke"])
    except InputError as e:
        if not (req.reply_on_error or cfg.reply_on_error):
            raise
        outcome = replies.Outcome(verdict="error", run=None, base=None,
                                  base_commit=(info.get("base") or {}).get("commit", "?" * 12),
                                  base_how=(info.get("base") or {}).get("how", "HEAD"), error=e.message,
                                  results=str(results))
        ui.error(e.render())
    info["gate"] = {"verdict": outcome.verdict, **({"error": outcome.error} if outcome.error else {})}
    save()
    reply = _reply(req, cfg, series, outcome, results, ui)
    info["gate"]["reply"] = reply
    save()
    if outcome.first_bad:
        info["gate"]["patch_reply"] = _reply(req, cfg, series, outcome, results, ui, patch=outcome.first_bad[0])
        save()
    return {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(outcome.verdict, EXIT_ERROR), info


def _cell(record: RunRecord, profile: str, suite: str, where: Path) -> "replies.Cell":
    """One cell's outcome: its run, its base's, what the series changed."""
    from harness.reports import markdown

    cmp = json.loads((where / "comparison.json").read_text()) if (where / "comparison.json").is_file() else {}
    base_rec = markdown.load_run(Path(record.base["results"])) if record.base else None
    verdict = record.verdict if record.verdict in ("pass", "fail", "error") else "error"
    return replies.Cell(profile, suite, verdict, record, base_rec, cmp.get("regressions", []),
                        cmp.get("disappeared", []),
                        (record.errors[0].splitlines()[0] if record.errors else "") if verdict == "error" else "",
                        str(where))


def _merge(results: Path, ui: Ui) -> None:
    """summary.md, merged.json, junit.xml and kcidb.json over the cells, as
    'report --merge' gives them."""
    from harness.reports import merge as merge_reports

    try:
        merge_reports.write(merge_reports.cells([results]), results, warn=ui.warn)
    except HarnessError as e:  # the cells' own results are written whatever happens here
        ui.warn(f"the merged report was not written: {e.message}")


def _reproducer(req: GateRequest, src, opts: Options, tree: Path, cells: list[tuple[str, str]]) -> str:
    words = ["iommufd-harness", "gate", f"<{src.msgid}>" if src.msgid else str(src.path)]
    if src.inbox and src.msgid:
        words += ["--inbox", src.inbox]
    if req.revision is not None:
        words += ["--revision", str(req.revision)]
    names, tests = list(dict.fromkeys(p for p, _ in cells)), list(dict.fromkeys(t for _, t in cells))
    words += ["--kernel-src", str(tree), "--profiles" if len(names) > 1 else "--profile", ",".join(names),
              "--suites" if len(tests) > 1 else "--suite", ",".join(tests), "--debug", ",".join(opts.kernel.debug)]
    return " ".join(shlex.quote(w) for w in words)


WALK_BISECT = 6  # from this many patches on, which patch broke the series is bisected, not walked


def _which_patch(ropts: Options, series: Series, base_results: Path, results: Path, ui: Ui) -> dict | None:
    """Walk the failed series (bisect a long one) on the same kernel: the
    first patch that broke it.  The base and the whole series are the runs
    the gate has made; a walk that cannot say leaves the verdict as it is."""
    from harness import walk as walker

    n = len(series.patches)
    wopts = ropts.but(compare_base=False, baseline=None, results=results / "walk")
    ui.stage("which patch")
    try:
        code = walker.walk(wopts, ui, bisect=n >= WALK_BISECT, known={0: base_results, n: results})
        data = json.loads((results / "walk" / "walk.json").read_text())
    except (HarnessError, OSError, ValueError) as e:
        ui.warn(f"which patch broke the series is not known: the walk failed ({e})")
        return {"results": str(results / "walk"), "error": str(e), "first_broken": None}
    first = data.get("first_broken")
    out = {"results": str(results / "walk"), "bisect": n >= WALK_BISECT, "exit": code, "first_broken": None}
    if first:
        k = first["step"]
        out["first_broken"] = {"patch": k, "of": n, "subject": series.patches[k - 1].subject,
                               "message_id": series.patches[k - 1].msgid,
                               "broke": next((s["broke"] + s["new_reports"] for s in data["steps"]
                                              if s["index"] == k), [])}
        ui.info(f"the first patch that breaks it: {k}/{n} {series.patches[k - 1].subject}")
    return out


def _reply(req: GateRequest, cfg: GateConfig, series: Series, outcome, results: Path, ui: Ui,
           patch: int | None = None) -> dict:
    """Write (and send) the reply, or with ``patch`` the short one under
    that patch; what was done with it, for series.json."""
    sender = req.sender or cfg.sender or f"iommufd-harness <iommufd-harness@{socket.getfqdn() or 'localhost'}>"
    cc = (list_cc(series) if cfg.cc_list else []) + cfg.cc + req.cc
    if patch is None:
        msg, name, under = replies.compose(series, outcome, sender, cc), "reply.eml", series.first
    else:
        under = series.patches[patch - 1]
        msg = replies.compose(series, outcome, sender, cc, under=under, text=replies.patch_body(series, outcome))
        name = f"reply-patch-{patch}.eml"
    (results / name).write_bytes(bytes(msg))
    done: dict = {"message_id": str(msg["Message-ID"]).strip("<>"), "in_reply_to": under.msgid,
                  "to": str(msg["To"]), "cc": cc, "file": str(results / name)}
    if outcome.verdict == "error" and not (req.reply_on_error or cfg.reply_on_error):
        done["not_sent"] = "no verdict (infrastructure): the author is not mailed without --reply-on-error"
        ui.warn(f"no verdict: the reply is not sent ({results / 'reply.eml'}); --reply-on-error sends it")
        return done
    if req.reply_to is not None:
        to = req.reply_to.expanduser()
        to = to if patch is None else to.with_name(f"{to.stem}-patch-{patch}{to.suffix or '.eml'}")
        to.write_bytes(bytes(msg))
        done["written"] = str(to)
        ui.info(f"reply written: {to}")
    if req.smtp:
        done["sent"] = send(msg, req.smtp, cfg.smtp)
        ui.info(f"reply sent through {done['sent']} to {msg['To']}" + (f", cc {msg['Cc']}" if cc else ""))
    if req.reply_to is None and not req.smtp:
        done["not_sent"] = "neither --reply-to nor --smtp"
    return done

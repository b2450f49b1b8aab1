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

import dataclasses
import json
import os
import re
import shlex
import smtplib
import socket
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness import debugkernels, proc, profiles
from harness.errors import EXIT_ERROR, EXIT_FAIL, EXIT_PASS, HarnessError, InputError
from harness.mail import reply as replies
from harness.mail.series import Series, fetch, parse_source
from harness.pipeline import Options, results_dir_for
from harness.stages import source
from harness.ui import Ui
from harness.workdir import WorkDir, WorkLock

GATE_DEBUG = ("kasan", "kmemleak", "lockdep")  # what the gate runs unless told otherwise: the detectors' kernel
CONFIG_NAME = "iommufd-gate.toml"  # kept next to the tree: <kernel-src>/iommufd-gate.toml
PATCH_ID_DEPTH = 2000  # how far back from the base prerequisites are looked for


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
    profile: str | None = None
    suite: str | None = None
    debug: tuple[str, ...] | None = None
    inbox: str | None = None
    sender: str | None = None  # From of the reply
    cc: list[str] = field(default_factory=list)  # besides the list, always
    cc_list: bool = True  # Cc the list the series came on
    reply_on_error: bool = False
    smtp: Smtp | None = None


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
    known = {"profile", "suite", "debug", "inbox", "from", "cc", "cc_list", "reply_on_error", "smtp"}
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
        return GateConfig(
            path=Path(path), profile=g.get("profile"), suite=g.get("suite"),
            debug=debugkernels.parse([debug if isinstance(debug, str) else ",".join(debug)]) if debug is not None
            else None,
            inbox=g.get("inbox"), sender=g.get("from"), cc=list(g.get("cc", [])), cc_list=bool(g.get("cc_list", True)),
            reply_on_error=bool(g.get("reply_on_error", False)), smtp=smtp)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"gate config {path} is invalid: {type(e).__name__}: {e}") from None


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
    except (OSError, smtplib.SMTPException) as e:
        raise HarnessError(f"sending the reply through {host}:{port_n} failed: {e}",
                           "the reply is in the results dir (reply.eml); send it by hand or gate again") from None
    if refused:
        raise HarnessError(f"{host}:{port_n} refused recipient(s) {', '.join(refused)}")
    return f"{host}:{port_n}"


def _setup(req: GateRequest, opts: Options) -> tuple[Options, GateConfig, Path]:
    """The gate's options (the tree, its config, the gate's kernel), checked."""
    if opts.patches or opts.commits or opts.rev:
        raise InputError("gate takes the series from SERIES: --patches, --commits and --rev do not apply",
                         "use 'run' to test patches of your own")
    if opts.kernel_src is None or not (Path(opts.kernel_src).expanduser() / ".git").exists():
        raise InputError("gate needs --kernel-src: the git tree the series is for",
                         "give the tree the series was written against (its base-commit must be in it)")
    tree = Path(opts.kernel_src).expanduser().resolve()
    cfg = load_config(req.config, tree)
    opts = dataclasses.replace(
        opts, kernel_src=tree,
        profile=opts.profile if opts.profile != Options.profile or not cfg.profile else cfg.profile,
        suite=opts.suite if opts.suite != Options.suite or not cfg.suite else cfg.suite,
        debug=opts.debug or (cfg.debug if cfg.debug is not None else GATE_DEBUG),
        compare_base=True)
    profiles.load(opts.profile)
    return opts, cfg, tree


def gate(req: GateRequest, opts: Options, ui: Ui) -> int:
    opts, cfg, tree = _setup(req, opts)
    return _gate_series(req, opts, cfg, tree, ui)[0]


def _gate_series(req: GateRequest, opts: Options, cfg: GateConfig, tree: Path, ui: Ui) -> tuple[int, dict]:
    """Gate one series: (exit code, what series.json says)."""
    from harness.jobs import run_one, validate
    from harness.reports import markdown

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
        ropts = dataclasses.replace(opts, rev=base, patches=[series.mbox], results=results)
        validate(ropts)
        with WorkLock(work):
            record, interrupted = run_one(ropts, ui, results)
        if interrupted:
            raise KeyboardInterrupt
        cmp = json.loads((results / "comparison.json").read_text()) if (results / "comparison.json").is_file() \
            else {}
        base_rec = markdown.load_run(Path(record.base["results"])) if record.base else None
        verdict = record.verdict if record.verdict in ("pass", "fail", "error") else "error"
        outcome = replies.Outcome(
            verdict=verdict, run=record, base=base_rec, base_commit=base, base_how=how,
            regressions=cmp.get("regressions", []), disappeared=cmp.get("disappeared", []),
            error=(record.errors[0].splitlines()[0] if record.errors else "") if verdict == "error" else "",
            reproduce=[_reproducer(req, src, opts, tree)], results=str(results))
        if verdict == "fail" and len(series.patches) > 1 and req.walk and record.base:
            info["walk"] = _which_patch(ropts, series, Path(record.base["results"]), results, ui)
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


def _reproducer(req: GateRequest, src, opts: Options, tree: Path) -> str:
    words = ["iommufd-harness", "gate", f"<{src.msgid}>" if src.msgid else str(src.path)]
    if src.inbox and src.msgid:
        words += ["--inbox", src.inbox]
    if req.revision is not None:
        words += ["--revision", str(req.revision)]
    words += ["--kernel-src", str(tree), "--profile", opts.profile, "--suite", opts.suite,
              "--debug", ",".join(opts.debug)]
    return " ".join(shlex.quote(w) for w in words)


WALK_BISECT = 6  # from this many patches on, which patch broke the series is bisected, not walked


def _which_patch(ropts: Options, series: Series, base_results: Path, results: Path, ui: Ui) -> dict | None:
    """Walk the failed series (bisect a long one) on the same kernel: the
    first patch that broke it.  The base and the whole series are the runs
    the gate has made; a walk that cannot say leaves the verdict as it is."""
    from harness import walk as walker

    n = len(series.patches)
    wopts = dataclasses.replace(ropts, compare_base=False, baseline=None, results=results / "walk")
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


@dataclass
class PollRequest:
    """``gate --new``: the inbox's new series, each gated once."""

    since: str | None = None  # --since; default: the last poll (less a margin), else a day ago
    state: Path | None = None  # --state; default: <work>/gate/<inbox>.json
    list_only: bool = False  # --list: what would be gated, nothing run, the state untouched


def gate_new(req: GateRequest, poll: PollRequest, opts: Options, ui: Ui) -> int:
    """Poll the inbox: gate every series revision posted since the last poll
    that the state file does not have; record each verdict as it comes.
    Exit 2 if a series got no verdict, else 1 if one failed, else 0."""
    import datetime as dt

    from harness.mail import watch
    from harness.mail.series import LORE

    if req.revision is not None or req.reply_to is not None:
        raise InputError("gate --new gates each new series as it is: --revision and --reply-to do not apply",
                         "each series' reply is kept in its results dir (reply.eml); --smtp sends them")
    opts, cfg, tree = _setup(req, opts)
    inbox = (req.inbox or cfg.inbox or LORE).rstrip("/")
    work = WorkDir(opts.work).prepare()
    path = (poll.state.expanduser().resolve() if poll.state else watch.state_path(work.root, inbox))
    root = opts.results.expanduser().resolve() if opts.results else None
    if root is not None and root.exists() and any(root.iterdir()):
        raise InputError(f"results dir {root} is not empty", "give a new directory to --results")
    with watch.polling(path):
        state = watch.State(path, inbox)
        now = dt.datetime.now(dt.timezone.utc)
        since = watch.since_of(state, poll.since, now)
        ui.stage("poll")
        postings = watch.starts(watch.feed(inbox, since))
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
            ropts = dataclasses.replace(opts, results=root / f"{i:02d}-{slug}" if root else None)
            ui.stage(f"series {i}/{len(new)}")
            at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            try:
                code, info = _gate_series(one, ropts, one_cfg, tree, ui)
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

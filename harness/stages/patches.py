"""Stage 2 (patches): load a patch series and apply it to the working copy.

Inputs may be a quilt directory (``series`` + patches), a single patch file,
or an mbox as written by ``git format-patch --stdout`` or b4.  Every patch is
checked with a dry run before it is applied; when one does not apply, the
tree is put back the way it was and the error names the patch, the file and
the hunks that failed.

The working copy remembers which series is applied (``.harness-patches.json``)
and the pristine hash of every file it touched, so a re-run with the same
series and an unchanged origin does nothing and keeps the build incremental.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness import proc
from harness.errors import PatchError
from harness.stages import applies

STATE_FILE = ".harness-patches.json"


@dataclass(frozen=True)
class Patch:
    name: str
    subject: str
    sha256: str
    text: str = field(repr=False)
    strip: int = 1
    origin: str = ""  # where it came from (series dir, file, mbox, commit)
    rules: tuple[applies.Applicability, ...] = ()  # which trees it is for (series.toml)

    @property
    def files(self) -> tuple[str, ...]:
        return touched_files(self.text, self.strip)

    def record(self) -> dict:
        rec = {"name": self.name, "subject": self.subject, "sha256": self.sha256}
        if self.origin.startswith("commit "):
            rec["commit"] = self.origin.split()[1]
        return rec

    def not_for(self, tree: Path, version: str) -> str | None:
        """Why this patch is not for ``tree`` (version ``version``), or None."""
        for rule in self.rules:
            reason = rule.reason_not(tree, version)
            if reason:
                return reason + (f" ({rule.why})" if rule.why else "")
        return None


@dataclass(frozen=True)
class PatchResult:
    applied: tuple[Patch, ...]  # the whole series, in order (those already in the tree included)
    changed: tuple[str, ...]  # files rewritten in the working copy
    already: tuple[int, ...] = ()  # positions in ``applied`` skipped: the tree has them (they apply in reverse)
    not_for: dict[int, str] = field(default_factory=dict)  # positions skipped by series.toml -> why

    def status(self, at: int) -> str:
        if at in self.not_for:
            return "not for this tree"
        return "already in tree" if at in self.already else "applied"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _clean_subject(subject: str) -> str:
    subject = " ".join(subject.split())
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", subject)


def _subject_of(text: str, fallback: str) -> str:
    m = re.search(r"^Subject:\s*(.*(?:\n[ \t].*)*)", text, re.M)
    if m:
        raw = m.group(1).replace("\n", " ")
        if "=?" in raw:  # RFC 2047 encoded words
            import email.header

            try:
                raw = str(email.header.make_header(email.header.decode_header(raw)))
            except Exception:
                pass
        return _clean_subject(raw)
    return fallback


def _is_diff(text: str) -> bool:
    return bool(re.search(r"^(diff --git |--- \S)", text, re.M)) and bool(re.search(r"^\+\+\+ \S", text, re.M))


def touched_files(text: str, strip: int = 1) -> tuple[str, ...]:
    """Paths (relative to the tree) a unified diff creates, changes or deletes."""
    files: list[str] = []

    def add(path: str) -> None:
        path = path.split("\t")[0].strip()
        if path == "/dev/null":
            return
        parts = path.split("/")
        rel = "/".join(parts[strip:]) if strip else path
        if rel and rel not in files:
            files.append(rel)

    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            add(line[4:])
            add(lines[i + 1][4:])
        elif line.startswith("rename from ") or line.startswith("rename to "):
            # git renames carry no ---/+++ pair when the content is unchanged
            name = line.split(" ", 2)[2]
            add(("a/" * strip) + name if strip else name)
    return tuple(files)


def load_patch_file(path: Path, strip: int = 1, name: str | None = None) -> list[Patch]:
    """A single patch, or every patch in an mbox (cover letters are skipped)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PatchError(f"cannot read patch {path}: {e.strerror}", "check the --patches argument") from None
    text = raw.decode("utf-8", errors="replace")
    if text.startswith("From ") and len(re.findall(r"^From \S+ .*\d{4}$", text, re.M)) > 1:
        return _load_mbox(path, strip)
    if not _is_diff(text):
        raise PatchError(f"{path} is not a patch: it holds no unified diff",
                         "pass a .patch from 'git format-patch', an mbox, or a quilt directory")
    pname = name or path.name
    return [Patch(pname, _subject_of(text, pname), _sha(text), text, strip, str(path))]


def _load_mbox(path: Path, strip: int) -> list[Patch]:
    import email.header
    import mailbox

    patches = []
    box = mailbox.mbox(str(path), create=False)
    try:
        for index, msg in enumerate(box, start=1):
            body = _message_text(msg)
            subject = _clean_subject(str(email.header.make_header(email.header.decode_header(msg.get("Subject", "")))))
            if not _is_diff(body):
                continue  # cover letter or reply
            full = f"Subject: {msg.get('Subject', '')}\n\n{body}"
            slug = re.sub(r"[^A-Za-z0-9]+", "-", subject).strip("-")[:52] or "patch"
            patches.append(Patch(f"{index:04d}-{slug}.patch", subject, _sha(full), full, strip, str(path)))
    finally:
        box.close()
    if not patches:
        raise PatchError(f"mbox {path} holds no patches", "pass an mbox written by 'git format-patch --stdout' or b4")
    return patches


def _message_text(msg) -> str:
    """The text parts of one mbox message (a mailbox.mboxMessage)."""
    if msg.is_multipart():
        parts = []
        for part in msg.walk():
            if part.get_content_maintype() == "text":
                payload = part.get_payload(decode=True) or b""
                parts.append(payload.decode(part.get_content_charset() or "utf-8", errors="replace"))
        return "\n".join(parts)
    payload = msg.get_payload(decode=True) or b""
    return payload.decode(msg.get_content_charset() or "utf-8", errors="replace")


def load_series_dir(directory: Path) -> list[Patch]:
    series = directory / "series"
    if not series.is_file():
        raise PatchError(f"{directory} has no 'series' file", "a quilt directory lists its patches, in order, in 'series'")
    patches: list[tuple[str, Patch]] = []  # (series entry, patch)
    names: list[str] = []
    for lineno, line in enumerate(series.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        strip = 1
        for opt in fields[1:]:
            m = re.fullmatch(r"-p(\d+)", opt)
            if not m:
                raise PatchError(f"{series}:{lineno}: unknown option {opt!r}", "quilt series lines are 'NAME [-pN]'")
            strip = int(m.group(1))
        pfile = directory / fields[0]
        if not pfile.is_file():
            raise PatchError(f"{series}:{lineno}: patch {fields[0]} does not exist in {directory}")
        # an mbox entry holds several patches: the entry's rules are theirs
        patches.extend((fields[0], p) for p in load_patch_file(pfile, strip, name=fields[0]))
        names.append(fields[0])
    rules = applies.load(directory, names)
    return [replace(p, rules=rules.for_patch(entry)) for entry, p in patches]


def load_commits(repo: Path, spec: str) -> tuple[str, list[Patch]]:
    """``--commits A..B`` of the git repository ``repo``: the commits B has
    and A has not, oldest first, as patches (``git format-patch``), and the
    commit they apply to (A).  The repository is only read."""
    from harness.stages import source

    if spec.count("..") != 1 or "..." in spec:
        raise PatchError(f"--commits {spec!r} is not a range", "write BASE..TIP, e.g. v6.12..my-branch or HEAD~3..HEAD")
    a, b = spec.split("..")
    if not (repo / ".git").exists():
        raise PatchError(f"--commits {spec}: {repo} is not a git repository", "pass the git checkout with --kernel-src")
    base, tip = source.resolve(repo, a or "HEAD"), source.resolve(repo, b or "HEAD")
    try:
        source.git(repo, "merge-base", "--is-ancestor", base, tip)
    except Exception:
        raise PatchError(f"--commits {spec}: {a} is not an ancestor of {b}",
                         "pass BASE..TIP where TIP is BASE plus the series (see git merge-base)") from None
    merges = source.git(repo, "rev-list", "--merges", f"{base}..{tip}").split()
    if merges:
        raise PatchError(f"--commits {spec} holds merge commits ({', '.join(m[:12] for m in merges[:3])})",
                         "pass a range of ordinary commits, e.g. the series on top of its base")
    shas = source.git(repo, "rev-list", "--reverse", f"{base}..{tip}").split()
    if not shas:
        raise PatchError(f"--commits {spec} holds no commits", "pass BASE..TIP with TIP ahead of BASE")
    out = []
    for i, sha in enumerate(shas, start=1):
        text = source.git(repo, "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false", "format-patch",
                          "-1", "--stdout", "--no-signature", "--full-index", sha,
                          what=f"exporting commit {sha[:12]}")
        if not _is_diff(text):
            raise PatchError(f"--commits {spec}: commit {sha[:12]} changes no file the patch tool can apply "
                             "(empty, or only binary/mode changes)", "drop it from the range")
        subject = _subject_of(text, sha[:12])
        slug = re.sub(r"[^A-Za-z0-9]+", "-", subject).strip("-")[:52] or "commit"
        out.append(Patch(f"{i:04d}-{slug}.patch", subject, _sha(text), text, 1, f"commit {sha}"))
    return base, out


def load(spec: Path) -> list[Patch]:
    """Load ``--patches`` input: a quilt directory, a patch file or an mbox."""
    if not spec.exists():
        raise PatchError(f"patch input {spec} does not exist", "pass a quilt directory, a .patch file or an mbox")
    if spec.is_dir():
        return load_series_dir(spec)
    return load_patch_file(spec)


# --- applying -------------------------------------------------------------


def _file_sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return None


def _load_state(tree: Path) -> dict:
    try:
        return json.loads((tree / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"series": [], "touched": {}}


def _save_state(tree: Path, state: dict) -> None:
    tmp = tree / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(tree / STATE_FILE)


def protected_files(origin: Path, tree: Path) -> set[str]:
    """Files the source sync may leave as they are: patched files whose
    pristine version in the origin has not changed, and files put back to the
    origin's content by an earlier series switch.  The latter have a fresh
    modification time (so make rebuilt them); a sync would give them the
    origin's older time again and make it look as if they had changed."""
    state = _load_state(tree)
    keep = set()
    for key in ("touched", "restored"):
        for rel, pre in state.get(key, {}).items():
            if _file_sha(origin / rel) == pre:
                keep.add(rel)
    return keep


def _restore(origin: Path, tree: Path, rels) -> list[str]:
    """Put files back to their origin content (or remove them if the origin
    has none); returns the ones that actually changed."""
    changed = []
    for rel in rels:
        src, dst = origin / rel, tree / rel
        if _file_sha(src) == _file_sha(dst):
            continue
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            # a fresh modification time: make must see the file as changed
            # (the origin's own time can be older than the last build)
            shutil.copyfile(src, dst)
            shutil.copymode(src, dst)
        else:
            dst.unlink(missing_ok=True)
        changed.append(rel)
    return changed


def _snapshot(tree: Path, rels) -> dict[str, tuple[str, int, int]]:
    """Content hash and times of the files among ``rels`` that exist."""
    snap = {}
    for rel in rels:
        path = tree / rel
        try:
            st = path.stat()
        except OSError:
            continue
        sha = _file_sha(path)
        if sha is not None:
            snap[rel] = (sha, st.st_atime_ns, st.st_mtime_ns)
    return snap


def _keep_times(tree: Path, before: dict[str, tuple[str, int, int]]) -> set[str]:
    """Give the files whose content is what it was in ``before`` their
    times back; returns them."""
    same = set()
    for rel, (sha, atime, mtime) in before.items():
        path = tree / rel
        if _file_sha(path) == sha:
            os.utime(path, ns=(atime, mtime))
            same.add(rel)
    return same


def _failure_details(output: str) -> str:
    details, current = [], None
    for line in output.splitlines():
        m = re.match(r"(?:checking|patching) file (.+)", line)
        if m:
            current = m.group(1).strip().strip("'")
            continue
        m = re.match(r"Hunk #(\d+) FAILED at (\d+)", line)
        if m:
            details.append(f"{current}: hunk #{m.group(1)} (at line {m.group(2)}) does not apply")
            continue
        if "can't find file to patch" in line:
            details.append("a file it changes does not exist in the tree")
        elif "No file to patch" in line or "Reversed (or previously applied)" in line:
            details.append(line.strip())
        elif line.startswith("patch: ****"):
            details.append(line.removeprefix("patch: **** ").strip())
    return "\n".join(f"  {d}" for d in details) or output.strip()[-2000:]


def apply_series(origin: Path, tree: Path, patches: list[Patch], protected: set[str], log: Path,
                 version: str | None = None) -> PatchResult:
    """Bring ``tree`` to ``origin`` + ``patches``.  ``protected`` is what the
    source sync left alone (see :func:`protected_files`).  A patch whose
    series.toml rules say it is not for this tree (``origin``, kernel
    ``version``) is left out."""
    proc.require_tool("patch")
    state = _load_state(tree)
    not_for = {}
    for at, patch in enumerate(patches):
        why = patch.not_for(origin, version) if version and patch.rules else None
        if why:
            not_for[at] = why
    want = [("not-for:" if i in not_for else "") + p.sha256 for i, p in enumerate(patches)]
    # a patch found already in the tree was decided on its files as they were
    already_files = state.get("already_files", {})
    unchanged = all(_file_sha(origin / rel) == sha for rel, sha in already_files.items())
    if state.get("series") == want and set(state.get("touched", {})) <= protected and unchanged:
        already = tuple(i for i in state.get("already", []) if isinstance(i, int))
        return PatchResult(tuple(patches), (), already, {i: r for i, r in not_for.items() if i not in already})

    # every file this may rewrite, as it is now: one that ends up as it was
    # keeps its modification time, so make does not rebuild what depends on it
    # (a series that changed in one patch re-applies the others to the same text)
    before = _snapshot(tree, set(state.get("touched", {})) | {rel for p in patches for rel in p.files})
    changed = _restore(origin, tree, state.get("touched", {}))
    restored = {rel: sha for rel, sha in state.get("restored", {}).items() if _file_sha(origin / rel) == sha}
    restored.update({rel: _file_sha(origin / rel) for rel in changed})
    touched: dict[str, str | None] = {}
    already: list[int] = []
    already_files: dict[str, str | None] = {}
    _save_state(tree, {"series": [], "touched": {}})
    for at, patch in enumerate(patches):
        pfile = log.parent / "patches" / patch.name
        pfile.parent.mkdir(parents=True, exist_ok=True)
        pfile.write_text(patch.text)
        if at in not_for:
            # a tree that already has the patch says so rather than "not for this tree"
            if _applies_in_reverse(patch, tree, pfile, log):
                already.append(at)
                already_files.update({rel: _file_sha(origin / rel) for rel in patch.files})
                del not_for[at]
            continue
        files = patch.files
        for rel in files:
            touched.setdefault(rel, _file_sha(origin / rel))
        _save_state(tree, {"series": [], "touched": touched})  # a crash below leaves a restorable tree
        base = ["patch", f"-p{patch.strip}", "-N", "-f", "-F0", "-s", "-d", str(tree), "-i", str(pfile)]
        check = proc.run(base[:-2] + ["--dry-run", "-i", str(pfile)], timeout=300, log=log)
        ok = check.returncode == 0 and not check.timed_out
        if ok:
            done = proc.run(base, timeout=300, log=log)
            ok = done.returncode == 0
            check = done
        if not ok and _applies_in_reverse(patch, tree, pfile, log):
            already.append(at)  # the tree has it already: nothing to do
            already_files.update({rel: _file_sha(origin / rel) for rel in files})
            continue
        if not ok:
            verbose = proc.run(["patch", f"-p{patch.strip}", "-N", "-f", "-F0", "--dry-run", "-d", str(tree), "-i", str(pfile)],
                               timeout=300)
            _restore(origin, tree, touched)
            _save_state(tree, {"series": [], "touched": {}})
            _keep_times(tree, before)
            raise PatchError(
                f"patch {patch.name} ({patch.subject}) does not apply to {origin}:\n"
                + _failure_details(verbose.output),
                "rebase the patch onto this tree, or drop it from the series (for the project's own "
                "kernel-patches/default: --no-default-patches); the working copy was left unpatched",
                log=str(log),
            )
        changed.extend(r for r in files if r not in changed)
    restored = {rel: sha for rel, sha in restored.items() if rel not in touched}
    same = _keep_times(tree, before)
    changed = [rel for rel in changed if rel not in same]
    _save_state(tree, {"series": want, "names": [p.name for p in patches], "touched": touched,
                       "restored": restored, "already": already, "already_files": already_files})
    return PatchResult(tuple(patches), tuple(changed), tuple(already), not_for)


def _applies_in_reverse(patch: Patch, tree: Path, pfile: Path, log: Path) -> bool:
    """Is ``patch`` already in ``tree``: does it apply cleanly in reverse?"""
    res = proc.run(["patch", f"-p{patch.strip}", "-R", "-f", "-F0", "-s", "--dry-run", "-d", str(tree), "-i",
                    str(pfile)], timeout=300, log=log)
    return res.returncode == 0 and not res.timed_out

"""Stage 5 (image): the guest initramfs.

A base image (busybox, an SSH server and the libraries it needs, from Debian packages,
plus the selftest binaries) is built once per set of inputs and cached.  Each
run appends a small second archive with that run's SSH keys: the kernel
unpacks concatenated cpio archives in order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness import arches, elfinfo, proc
from harness.errors import ImageError
from harness.stages.cpio import CpioWriter
from harness.targets.base import IMAGE_LAYOUT
from harness.workdir import sha256_file

GUEST_SELFTEST_DIR = IMAGE_LAYOUT.selftest_dir


# the SSH servers a recipe may name: each reads its host key in its own format
HOST_KEY_FORMATS = ("openssh", "dropbear")


@dataclass(frozen=True)
class SshLayout:
    """The image's SSH server and where it finds what each run gives it: the
    host key (written in that server's own format, its public half next to
    it as ``.pub``), the client's authorized key, and the directories they
    and the server need."""
    server: str  # one of HOST_KEY_FORMATS
    host_key: str
    authorized_keys: str
    directories: tuple[str, ...]

    @classmethod
    def from_toml(cls, data: object, where: Path) -> "SshLayout":
        """The recipe's [ssh] table, every field checked: a wrong one is an
        ImageError that names it."""
        def bad(what: str) -> ImageError:
            return ImageError(f"image recipe {where}: {what}",
                              "[ssh] needs server (" + " or ".join(HOST_KEY_FORMATS) + "), host_key and "
                              "authorized_keys (absolute paths) and directories (a list of absolute paths)")

        def path(v: object) -> bool:
            return isinstance(v, str) and v.startswith("/") and v != "/"

        if data is None:
            raise bad("it has no [ssh] table")
        if not isinstance(data, dict):
            raise bad("ssh is not a table")
        for key in ("server", "host_key", "authorized_keys", "directories"):
            if key not in data:
                raise bad(f"ssh.{key} is missing")
        if data["server"] not in HOST_KEY_FORMATS:
            raise bad(f"ssh.server {data['server']!r} is none of {', '.join(HOST_KEY_FORMATS)}")
        for key in ("host_key", "authorized_keys"):
            if not path(data[key]):
                raise bad(f"ssh.{key} {data[key]!r} is not an absolute path")
        dirs = data["directories"]
        if not isinstance(dirs, list) or not all(path(d) for d in dirs):
            raise bad(f"ssh.directories {dirs!r} is not a list of absolute paths")
        return cls(data["server"], data["host_key"], data["authorized_keys"], tuple(dirs))


@dataclass(frozen=True)
class Recipe:
    directory: Path
    name: str
    packages: tuple[str, ...]
    binaries: tuple[str, ...]
    files: dict[str, tuple[str, int]]
    ssh: SshLayout

    @classmethod
    def load(cls, directory: Path) -> "Recipe":
        path = directory / "recipe.toml"
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise ImageError(f"cannot read image recipe {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ImageError(f"image recipe {path} is not valid TOML: {e}") from None
        try:
            files = {k: (v[0], int(v[1])) for k, v in data.get("files", {}).items()}
            ssh = SshLayout.from_toml(data.get("ssh"), path)
            recipe = cls(directory, data["name"], tuple(data["packages"]), tuple(data["binaries"]), files, ssh)
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise ImageError(f"image recipe {path} is incomplete: {e}",
                             "it needs name, packages, binaries and [files]") from None
        for dest, (src, _) in files.items():
            if not (directory / src).is_file():
                raise ImageError(f"image recipe {path}: file {src} (for {dest}) does not exist")
        return recipe


@dataclass(frozen=True)
class ImageRequest:
    recipe: Recipe
    arch: str  # a name from arches/
    selftests: dict[str, Path]


@dataclass(frozen=True)
class BaseImage:
    path: Path
    packages: dict[str, str]  # package -> .deb file name (records the version)
    rebuilt: bool
    ssh: SshLayout  # the recipe's: where run_image() puts the run's keys


@dataclass(frozen=True)
class SshKeys:
    client_private: Path  # OpenSSH private key, 0600
    client_public: str  # authorized_keys line
    host_private: dict[str, bytes]  # the host key's file in each server's format (HOST_KEY_FORMATS)
    host_public: str  # "ssh-ed25519 AAAA..."


# --- packages --------------------------------------------------------------


def fetch_packages(packages, deb_arch: str, cache: Path, log: Path) -> dict[str, Path]:
    """The .deb of each package, downloaded once into the cache."""
    cache.mkdir(parents=True, exist_ok=True)

    def found(pkg: str) -> list[Path]:  # PKG_VERSION_ARCH.deb, then PKG_VERSION_all.deb
        names = [n for n in have if n.startswith(f"{pkg}_")]
        return [cache / n for n in sorted(n for n in names if n.endswith(f"_{deb_arch}.deb"))
                + sorted(n for n in names if n.endswith("_all.deb"))]

    have = os.listdir(cache)  # one listing for every package: a run looks them all up
    debs: dict[str, Path] = {}
    missing = []
    for pkg in packages:
        if debs_of := found(pkg):
            debs[pkg] = debs_of[-1]
        else:
            missing.append(pkg)
    if missing:
        proc.require_tool("apt-get")
        res = proc.run(["apt-get", "download", *[f"{p}:{deb_arch}" for p in missing]],
                       cwd=cache, timeout=900, log=log)
        if res.returncode != 0:
            hint = "run 'apt-get update' (and for a foreign architecture 'dpkg --add-architecture " \
                   f"{deb_arch}'), or run 'make setup'"
            raise ImageError(f"could not download Debian packages {', '.join(missing)}:\n"
                             + "\n".join(res.output.strip().splitlines()[-5:]), hint, log=str(log))
        have = os.listdir(cache)
        for pkg in missing:
            if not (debs_of := found(pkg)):
                raise ImageError(f"apt-get download did not produce a .deb for {pkg}", log=str(log))
            debs[pkg] = debs_of[-1]
    return debs


def unpack(debs: dict[str, Path], root: Path, log: Path) -> None:
    proc.require_tool("dpkg-deb")
    stamp = root / ".unpacked.json"
    want = sorted(p.name for p in debs.values())
    try:
        if json.loads(stamp.read_text()) == want:
            return
    except (OSError, ValueError):
        pass
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for deb in debs.values():
        proc.run(["dpkg-deb", "-x", deb, root], timeout=300, log=log, error=ImageError,
                 what=f"unpacking {deb.name}")
    stamp.write_text(json.dumps(want))


def _resolve_in_root(root: Path, path: str) -> Path:
    """Follow symlinks inside the unpacked root (absolute links stay inside)."""
    p = Path(path)
    for _ in range(40):
        host = root / p.relative_to("/")
        if host.is_symlink():
            target = os.readlink(host)
            p = Path(target) if target.startswith("/") else (p.parent / target)
            p = Path(os.path.normpath(p))
            continue
        return host
    raise ImageError(f"symlink loop at {path} in the unpacked packages")


def library_closure(root: Path, binaries, triplet: str, machine: str) -> dict[str, Path]:
    """Image path -> host file for the binaries, their program interpreters and
    every shared library they need (transitively), found in the unpacked
    packages.  A file that is missing names the binary that needs it."""
    libdirs = [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib"]
    out: dict[str, Path] = {}
    todo: list[tuple[str, str | None]] = [(b, None) for b in binaries]
    while todo:
        path, who = todo.pop()
        if path in out:
            continue
        host = _resolve_in_root(root, path)
        if not host.is_file():
            raise ImageError(f"{path}{' (needed by ' + who + ')' if who else ''} is not in the recipe's packages",
                             "add the Debian package that ships it to the recipe's 'packages'")
        elfinfo.check_binary(host, machine, what=f"image file {path}")
        out[path] = host
        interp, libs = elfinfo.needed(host)
        if interp:
            todo.append((interp, path))
        for lib in libs:
            found = next((f"{d}/{lib}" for d in libdirs if _resolve_in_root(root, f"{d}/{lib}").is_file()), None)
            if found is None:
                raise ImageError(f"library {lib} (needed by {path}) is not in the recipe's packages",
                                 "add the Debian package that ships it to the recipe's 'packages'")
            todo.append((found, path))
    return out


def _ssh_directories(w: CpioWriter, ssh: SshLayout) -> None:
    """Root's home and the SSH server's directories, root's own: both
    archives of a run's initrd write them, and the kernel gives a directory
    the mode of its last entry."""
    w.directory("/root", 0o700)
    for d in ssh.directories:
        w.directory(d, 0o700 if d.startswith("/root/") else 0o755)


def build_base(req: ImageRequest, images: Path, cache: Path, log: Path) -> BaseImage:
    arch = arches.load(req.arch)
    deb_arch, triplet = arch.debian_arch, arch.triplet
    debs = fetch_packages(req.recipe.packages, deb_arch, cache / "debs" / deb_arch, log)
    key_parts = {
        "debs": sorted(p.name for p in debs.values()),
        "files": {dest: [src, mode, sha256_file(req.recipe.directory / src)]
                  for dest, (src, mode) in sorted(req.recipe.files.items())},
        "binaries": list(req.recipe.binaries),
        "selftests": {n: sha256_file(p) for n, p in sorted(req.selftests.items())},
        "ssh": [req.recipe.ssh.server, list(req.recipe.ssh.directories)],
        "format": 2,  # 2: the SSH server's directories are part of the image
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    out = images / f"{req.recipe.name}-{req.arch}-{key}.cpio"
    packages = {pkg: deb.name for pkg, deb in debs.items()}
    if out.exists():
        return BaseImage(out, packages, False, req.recipe.ssh)  # its selftests (in the key) were checked when made
    for name, path in req.selftests.items():
        elfinfo.check_binary(path, arch.elf_machine, static=True, what=f"selftest {name}")
    root = cache / "rootfs" / f"{req.recipe.name}-{deb_arch}"
    unpack(debs, root, log)
    closure = library_closure(root, req.recipe.binaries, triplet, arch.elf_machine)
    images.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            w = CpioWriter(f)
            for d in ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/dev", "/proc", "/sys", "/tmp",
                      "/run", GUEST_SELFTEST_DIR):
                w.directory(d)
            _ssh_directories(w, req.recipe.ssh)
            w.chardev("/dev/console", 5, 1)
            w.chardev("/dev/null", 1, 3, 0o666)
            for dest in sorted(closure):
                mode = 0o755
                w.file(dest, closure[dest].read_bytes(), mode)
            for dest, (src, mode) in sorted(req.recipe.files.items()):
                w.file(dest, (req.recipe.directory / src).read_bytes(), mode)
            for name, path in sorted(req.selftests.items()):
                w.file(f"{GUEST_SELFTEST_DIR}/{name}", path.read_bytes(), 0o755)
            w.close()
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ImageError(f"cannot write image {out}: {e.strerror}", "check free space in the work dir") from None
    return BaseImage(out, packages, True, req.recipe.ssh)


# --- per-run keys -----------------------------------------------------------


def _ed25519_pair() -> tuple[bytes, bytes, str]:
    """A new ed25519 key: its OpenSSH private key file, its raw 32-byte
    private key and its public line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, raw, public.decode()


def _ssh_string(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def dropbear_ed25519(raw_private: bytes, public_line: str) -> bytes:
    """An ed25519 key in Dropbear's own key file format (what dropbearkey
    writes, and all that dropbear reads): string "ssh-ed25519", then a string
    of the 32-byte private key followed by the 32-byte public key."""
    blob = base64.b64decode(public_line.split()[1])
    public = blob[-32:]  # the public key blob ends with the 32 key bytes
    return _ssh_string(b"ssh-ed25519") + _ssh_string(raw_private + public)


# what make_keys writes into a run's directory (id_ed25519 is a private key)
KEY_FILES = ("id_ed25519", "id_ed25519.pub", "known_hosts")


def make_keys(run_dir: Path) -> SshKeys:
    """A fresh client and host key pair for one run; the client key is 0600.
    Whoever makes them removes them (:func:`remove_keys`) when the machine
    they reach is gone: a private key is never left behind."""
    run_dir.mkdir(parents=True, exist_ok=True)
    client_priv, _, client_pub = _ed25519_pair()
    host_priv, host_raw, host_pub = _ed25519_pair()
    path = run_dir / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(client_priv)
    os.chmod(path, 0o600)
    (run_dir / "id_ed25519.pub").write_text(client_pub + "\n")
    (run_dir / "known_hosts").write_text(f"[127.0.0.1]:* {host_pub}\n")
    host = {"openssh": host_priv, "dropbear": dropbear_ed25519(host_raw, host_pub)}
    return SshKeys(path, client_pub, host, host_pub)


def remove_keys(run_dir: Path) -> None:
    """Remove what :func:`make_keys` wrote into ``run_dir`` (whatever of it
    is there), then ``run_dir`` itself if nothing else is left in it."""
    for name in KEY_FILES:
        (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass  # gone already, or holds something else


def run_image(base: BaseImage, keys: SshKeys, run_dir: Path, extra: dict[str, tuple[Path, int]] | None = None
              ) -> Path:
    """The initrd for one run: the base image followed by the run's keys,
    where the base image's SSH server reads them, then ``extra`` files
    (image path -> (host file, mode)), which replace anything before them."""
    out = run_dir / "initrd.cpio"
    try:
        with open(out, "wb") as f:
            with open(base.path, "rb") as src:
                while chunk := src.read(1 << 20):
                    f.write(chunk)
            w = CpioWriter(f)
            ssh = base.ssh
            _ssh_directories(w, ssh)
            w.file(ssh.host_key, keys.host_private[ssh.server], 0o600)
            w.file(f"{ssh.host_key}.pub", (keys.host_public + "\n").encode(), 0o644)
            w.file(ssh.authorized_keys, (keys.client_public + "\n").encode(), 0o600)
            for dest, (src, mode) in (extra or {}).items():
                w.file(dest, src.read_bytes(), mode)
            w.close()
    except OSError as e:
        raise ImageError(f"cannot write {out}: {e.strerror}", "check free space in the work dir") from None
    return out


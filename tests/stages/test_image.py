import os
import shutil
import stat
import struct
from pathlib import Path

import pytest

from harness import elfinfo
from harness.errors import BuildError, ImageError
from harness.stages import image
from harness.stages.cpio import CpioWriter, read_entries

REPO = Path(__file__).resolve().parents[2]


def test_cpio_roundtrip_with_device_nodes_and_concatenation(tmp_path):
    out = tmp_path / "a.cpio"
    with open(out, "wb") as f:
        w = CpioWriter(f)
        w.chardev("/dev/console", 5, 1)
        w.file("/etc/ssh/sshd_config", b"Port 22\n", 0o644)
        w.symlink("/bin/sh", "busybox")
        w.close()
        assert f.tell() % 512 == 0
        w2 = CpioWriter(f)
        w2.file("/etc/ssh/authorized_keys", b"key", 0o600)
        w2.close()
    entries = {name: (mode, data) for name, mode, data in read_entries(out.read_bytes())}
    assert stat.S_ISCHR(entries["dev/console"][0])
    assert stat.S_ISDIR(entries["etc/ssh"][0]) and stat.S_ISDIR(entries["etc"][0])
    assert entries["etc/ssh/sshd_config"] == (stat.S_IFREG | 0o644, b"Port 22\n")
    assert entries["bin/sh"][1] == b"busybox"
    assert entries["etc/ssh/authorized_keys"] == (stat.S_IFREG | 0o600, b"key")


def test_library_closure_follows_needed_entries_of_host_binaries():
    triplet = "x86_64-linux-gnu"
    if not Path(f"/lib/{triplet}/libc.so.6").exists():
        pytest.skip("needs an x86_64 Debian host")
    closure = image.library_closure(Path("/"), ["/usr/bin/ssh-keygen" if Path("/usr/bin/ssh-keygen").exists()
                                                else "/bin/ls"], triplet, "EM_X86_64")
    names = {Path(p).name for p in closure}
    assert "libc.so.6" in names
    assert any(n.startswith("ld-linux") for n in names)


def test_missing_library_names_binary_and_fix(tmp_path):
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    shutil.copy("/bin/ls", root / "usr/sbin/tool")
    with pytest.raises(ImageError) as e:
        image.library_closure(root, ["/usr/sbin/tool"], "x86_64-linux-gnu", "EM_X86_64")
    assert "needed by /usr/sbin/tool" in e.value.message and "packages" in e.value.hint


def test_wrong_architecture_is_caught_before_booting(tmp_path):
    with pytest.raises(BuildError, match="built for EM_X86_64, but the target needs EM_AARCH64"):
        elfinfo.check_binary(Path("/bin/ls"), "EM_AARCH64")
    with pytest.raises(BuildError, match="dynamically linked"):
        elfinfo.check_binary(Path("/bin/ls"), "EM_X86_64", static=True)
    junk = tmp_path / "junk"
    junk.write_text("#!/bin/sh\n")
    with pytest.raises(BuildError, match="not an ELF file"):
        elfinfo.check_binary(junk, "EM_X86_64")


def test_build_id_from_sys_kernel_notes_format():
    desc = bytes(range(20))
    notes = struct.pack("<III", 4, 4, 1) + b"Xen\0" + b"abcd"  # an unrelated note first
    notes += struct.pack("<III", 4, len(desc), 3) + b"GNU\0" + desc
    assert elfinfo.build_id_from_notes(notes) == desc.hex()
    assert elfinfo.build_id_from_notes(b"") is None


def _tiny_base(tmp_path, ssh=None) -> image.BaseImage:
    ssh = ssh or image.Recipe.load(REPO / "qemu-images" / "qemu-board-arm64").ssh  # OpenSSH's
    base = tmp_path / "base.cpio"
    with open(base, "wb") as f:
        w = CpioWriter(f)
        w.file("/init", b"#!/bin/sh\n", 0o755)
        w.close()
    return image.BaseImage(base, {}, False, ssh)


def test_run_keys_are_private_and_appended_to_the_image(tmp_path):
    keys = image.make_keys(tmp_path / "run")
    assert stat.S_IMODE(os.stat(keys.client_private).st_mode) == 0o600
    assert keys.host_public.startswith("ssh-ed25519 ")
    initrd = image.run_image(_tiny_base(tmp_path), keys, tmp_path / "run")
    entries = {n: (m, d) for n, m, d in read_entries(initrd.read_bytes())}
    assert "init" in entries
    assert stat.S_IMODE(entries["etc/ssh/ssh_host_ed25519_key"][0]) == 0o600
    assert entries["etc/ssh/ssh_host_ed25519_key"][1] == keys.host_private["openssh"]
    assert entries["etc/ssh/authorized_keys"][1].decode().strip() == keys.client_public


def test_run_keys_go_where_the_recipes_ssh_server_reads_them(tmp_path):
    """The shipped guest recipe runs Dropbear: its host key in Dropbear's
    format, root's authorized key in a directory only root may write (the
    last entry of a directory sets its mode), and extra files last."""
    ssh = image.Recipe.load(REPO / "qemu-images" / "debian-bookworm").ssh
    assert ssh.server == "dropbear"
    keys = image.make_keys(tmp_path / "run")
    other = tmp_path / "other-key"
    other.write_bytes(b"cut")
    initrd = image.run_image(_tiny_base(tmp_path, ssh), keys, tmp_path / "run", {"/etc/extra": (other, 0o644)})
    entries = {n: (m, d) for n, m, d in read_entries(initrd.read_bytes())}
    mode, data = entries[ssh.host_key.lstrip("/")]
    assert stat.S_IMODE(mode) == 0o600 and data == keys.host_private["dropbear"]
    assert entries[ssh.authorized_keys.lstrip("/")][1].decode().strip() == keys.client_public
    assert stat.S_IMODE(entries["root"][0]) == 0o700 and stat.S_IMODE(entries["root/.ssh"][0]) == 0o700
    assert "etc/ssh/ssh_host_ed25519_key" not in entries
    # an extra file replaces what the run wrote before it
    cut = image.run_image(_tiny_base(tmp_path, ssh), keys, tmp_path, {ssh.host_key: (other, 0o600)})
    assert {n: d for n, _, d in read_entries(cut.read_bytes())}[ssh.host_key.lstrip("/")] == b"cut"


def test_dropbear_host_key_holds_the_same_key_as_the_openssh_one(tmp_path):
    """Dropbear's format: string "ssh-ed25519", string(private 32 bytes +
    public 32 bytes); the public half is the pinned one, and the private
    half is the OpenSSH file's key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    keys = image.make_keys(tmp_path)
    blob = keys.host_private["dropbear"]
    n = int.from_bytes(blob[:4], "big")
    assert blob[4:4 + n] == b"ssh-ed25519"
    m = int.from_bytes(blob[4 + n:8 + n], "big")
    assert m == 64 and len(blob) == 8 + n + m
    private, public = blob[8 + n:8 + n + 32], blob[8 + n + 32:]
    key = ed25519.Ed25519PrivateKey.from_private_bytes(private)
    raw = serialization.Encoding.Raw
    assert key.public_key().public_bytes(raw, serialization.PublicFormat.Raw) == public
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert line.decode() == keys.host_public
    openssh = serialization.load_ssh_private_key(keys.host_private["openssh"], None)
    assert openssh.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()) == private


@pytest.mark.parametrize("line, field", [
    ('server = "tinyssh"', "ssh.server 'tinyssh' is none of openssh, dropbear"),
    ('host_key = 5', "ssh.host_key 5 is not an absolute path"),
    ('host_key = "etc/key"', "ssh.host_key 'etc/key' is not an absolute path"),
    ('directories = "/etc/dropbear"', "ssh.directories '/etc/dropbear' is not a list of absolute paths"),
    ('directories = ["/etc/dropbear", 1]', "is not a list of absolute paths"),
    ('hostkey = "/etc/key"', "ssh.host_key is missing"),
])
def test_a_wrong_ssh_table_is_refused_naming_the_field(tmp_path, line, field):
    shutil.copytree(REPO / "qemu-images" / "debian-bookworm", tmp_path / "r")
    recipe = tmp_path / "r" / "recipe.toml"
    key = line.split(" =")[0]
    key = "host_key" if key == "hostkey" else key
    text = recipe.read_text()
    start = text.index(f"\n{key} = ", text.index("[ssh]")) + 1
    recipe.write_text(text[:start] + line + text[text.index("\n", start):])
    with pytest.raises(ImageError) as e:
        image.Recipe.load(tmp_path / "r")
    assert field in e.value.message and "[ssh] needs server" in (e.value.hint or "")


def test_a_recipe_without_an_ssh_table_is_refused(tmp_path):
    shutil.copytree(REPO / "qemu-images" / "debian-bookworm", tmp_path / "r")
    recipe = tmp_path / "r" / "recipe.toml"
    text = recipe.read_text()
    recipe.write_text(text[:text.index("[ssh]")] + text[text.index("# image path = file"):])
    with pytest.raises(ImageError, match=r"it has no \[ssh\] table"):
        image.Recipe.load(tmp_path / "r")


def test_the_board_recipe_keeps_openssh_and_its_config():
    """The QEMU board is what a Debian board is: OpenSSH's sshd, whose
    config names the paths its [ssh] table gives the run's keys."""
    r = image.Recipe.load(REPO / "qemu-images" / "qemu-board-arm64")
    assert r.ssh.server == "openssh" and "/usr/sbin/sshd" in r.binaries
    config = (r.directory / r.files["/etc/ssh/sshd_config"][0]).read_text()
    assert f"HostKey {r.ssh.host_key}\n" in config and f"AuthorizedKeysFile {r.ssh.authorized_keys}\n" in config


def test_shipped_recipe_loads_and_names_existing_files():
    r = image.Recipe.load(REPO / "qemu-images" / "debian-bookworm")
    assert "/usr/sbin/dropbear" in r.binaries and "/bin/busybox" in r.binaries
    assert r.files["/init"][1] == 0o755

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


def test_run_keys_are_private_and_appended_to_the_image(tmp_path):
    base = tmp_path / "base.cpio"
    with open(base, "wb") as f:
        w = CpioWriter(f)
        w.file("/init", b"#!/bin/sh\n", 0o755)
        w.close()
    keys = image.make_keys(tmp_path / "run")
    assert stat.S_IMODE(os.stat(keys.client_private).st_mode) == 0o600
    assert keys.host_public.startswith("ssh-ed25519 ")
    initrd = image.run_image(image.BaseImage(base, {}, False), keys, tmp_path / "run")
    entries = {n: (m, d) for n, m, d in read_entries(initrd.read_bytes())}
    assert "init" in entries
    assert stat.S_IMODE(entries["etc/ssh/ssh_host_ed25519_key"][0]) == 0o600
    assert entries["etc/ssh/authorized_keys"][1].decode().strip() == keys.client_public


def test_shipped_recipe_loads_and_names_existing_files():
    r = image.Recipe.load(REPO / "qemu-images" / "debian-bookworm")
    assert "/usr/sbin/sshd" in r.binaries and "/bin/busybox" in r.binaries
    assert r.files["/init"][1] == 0o755

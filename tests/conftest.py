import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# every results.json a test's run writes (in this process or a harness it starts) is checked
# against results.schema.json: a record that breaks the contract turns that test red
os.environ["IOMMUFD_HARNESS_CHECK_RESULTS"] = "1"

from fakes import FAKE_KERNEL, copy_fake_kernel  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture
def golden():
    return GOLDEN


@pytest.fixture
def fake_kernel(tmp_path):
    return copy_fake_kernel(tmp_path / "linux")


@pytest.fixture(scope="session")
def fake_selftests(tmp_path_factory):
    """The fake tree's selftest binaries, built once (static, like the real ones)."""
    import subprocess

    out = tmp_path_factory.mktemp("fake-selftests")
    inc = tmp_path_factory.mktemp("fake-headers")
    (inc / "linux").mkdir()
    (inc / "linux" / "iommufd.h").write_text("#define IOMMUFD_FAKE_UAPI 1\n")
    subprocess.run(["make", "-s", "-C", str(FAKE_KERNEL / "tools/testing/selftests/iommu"), f"OUTPUT={out}",
                    f"KHDR_INCLUDES=-isystem {inc}", "USERLDFLAGS=-static"], check=True)
    return out

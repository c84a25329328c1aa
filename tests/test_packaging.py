"""Packaging: the pins suit every Python the project declares; the Dockerfile lints and agrees with `make setup`;
the ffcv wheel is self-contained."""
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import List

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = (REPO / "pyproject.toml").read_text()


def requirements() -> List[Requirement]:
    """pyproject.toml's dependencies (read without tomllib, which Python 3.10 lacks)."""
    listed = re.search(r"^dependencies = \[(.*?)^\]", PYPROJECT, re.S | re.M).group(1)
    return [Requirement(line) for line in re.findall(r'^\s*"([^"]+)",', listed, re.M)]


def applies(requirement: Requirement, python: str) -> bool:
    """Whether pip installs `requirement` under Python `python` (its environment marker, if any)."""
    return requirement.marker is None or requirement.marker.evaluate({"python_version": python})


def pinned(package: str, python: str = "3.11") -> str:
    """The version pinned for `python`."""
    for requirement in requirements():
        if requirement.name == package and applies(requirement, python):
            return str(requirement.specifier).removeprefix("==")
    raise LookupError(package)


def declared_pythons() -> List[str]:
    """From requires-python's lowest minor version up to 3.13, the newest this project was set up on."""
    lowest = int(re.search(r'requires-python = ">=3\.(\d+)"', PYPROJECT).group(1))
    return [f"3.{minor}" for minor in range(lowest, 14)]


def test_every_declared_python_gets_one_pin_of_each_package():
    for python in declared_pythons():
        applying = [requirement.name for requirement in requirements() if applies(requirement, python)]
        assert sorted(applying) == sorted({requirement.name for requirement in requirements()}), python


def test_the_pins_for_the_lowest_python_are_made_for_it():
    """A pin installed here says in its metadata which Pythons it supports: numpy 2.4.6 said >=3.11, so
    `make setup` failed on Python 3.10, which README and requires-python promise ("No matching distribution
    found for numpy==2.4.6"). Python 3.10 now gets its own pins where this one's are too new for it."""
    lowest = declared_pythons()[0]
    for requirement in requirements():
        pin = str(requirement.specifier).removeprefix("==")
        if pin == str(requirement.specifier) or not applies(requirement, lowest):
            continue  # a range (pip picks a version for each Python), or a pin for other Pythons
        if metadata.version(requirement.name) != pin:
            continue  # this machine's Python installed another pin: its metadata is not here to read
        supported = SpecifierSet(metadata.metadata(requirement.name).get("Requires-Python") or "")
        assert supported.contains(f"{lowest}.0"), f"{requirement} needs Python {supported}, not {lowest}"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_base_image_carries_the_pinned_torch():
    base = re.search(r"ARG BASE_IMAGE=pytorch/pytorch:(\S+)", DOCKERFILE).group(1)
    assert base.split("-")[0] == pinned("torch")
    assert "cuda" in base and "cudnn" in base


def test_dockerfile_installs_what_make_setup_installs():
    makefile = (REPO / "Makefile").read_text()
    # the same system-package script and the same pinned project, in both places
    assert "bash scripts/install_system_deps.sh" in makefile and "bash scripts/install_system_deps.sh" in DOCKERFILE
    assert re.search(r"pip install -q -e '\.\[test\]'", makefile) and re.search(r"pip install -e \.\n", DOCKERFILE)
    script = (REPO / "scripts" / "install_system_deps.sh").read_text()
    packages = re.search(r"packages=\(([^)]*)\)", script).group(1).split()
    assert packages == ["libturbojpeg0-dev", "libopencv-dev", "pkg-config"]
    assert "ln -sfn /data data/imagenet" in DOCKERFILE  # where the rn* recipes look for betons
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "data", "runs", ".git"} <= set(ignored)


def system_deps(tmp_path, stubs: dict, root: bool = False) -> subprocess.CompletedProcess:
    """scripts/install_system_deps.sh on a PATH of `stubs` (command -> its bash body) and the few real commands it
    runs: a machine that has those commands and no others."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("grep", "cat"):
        (bin_dir / name).symlink_to(shutil.which(name))
    for name, body in {"id": f"echo {0 if root else 1000}", **stubs}.items():
        (bin_dir / name).write_text(f"#!{shutil.which('bash')}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return subprocess.run([shutil.which("bash"), str(REPO / "scripts" / "install_system_deps.sh")],
                          env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=30)


def test_system_deps_found_by_pkg_config_install_nothing(tmp_path):
    """conda's or dnf's libjpeg-turbo and OpenCV: what ffcv's build looks for is there, apt is not asked."""
    result = system_deps(tmp_path, {"pkg-config": "exit 0", "apt-get": "echo apt-get ran; exit 1"})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("stubs, root, remedy", [
    ({}, True, "this machine has no apt-get to install them: install them with its package manager"),
    ({"apt-get": "exit 0", "dpkg-query": "exit 1"}, False, "needs root, which this user is not, and there is no sudo"),
])
def test_system_deps_that_cannot_be_installed_are_one_line_and_exit_2(tmp_path, stubs, root, remedy):
    """A machine without apt (Fedora, Arch, a conda-only cluster) tried `sudo apt-get` and failed on a missing
    command; a user without root or sudo likewise."""
    result = system_deps(tmp_path, {"pkg-config": "exit 1", **stubs}, root=root)
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.count("\n") == 1 and remedy in result.stderr, result.stderr
    assert result.stderr.startswith("install_system_deps.sh: ffcv 1.0.2 compiles against libjpeg-turbo and OpenCV")


def test_slurm_script_is_valid_bash_with_c10d_rendezvous(tmp_path):
    script = REPO / "scripts" / "slurm_rn50.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # submitted from another folder (SLURM starts the job where sbatch ran): one line, not srun's missing file
    result = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr == (f"slurm_rn50.sbatch: {tmp_path} has no .venv/bin/torchrun: "
                                                        "submit from the repository root, after make setup\n")
    text = script.read_text()
    assert "--rdzv_backend=c10d" in text and "--nnodes=\"$SLURM_JOB_NUM_NODES\"" in text
    assert "pipeline/train.py --cfg \"$RECIPE\"" in text


@pytest.fixture(scope="module")
def ffcv_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    result = subprocess.run(["bash", str(REPO / "scripts" / "build_ffcv_wheel.sh"), sys.executable, str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = list(out.glob("ffcv-1.0.2-*manylinux_2_35_x86_64.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_bundles_its_libraries(ffcv_wheel):
    auditwheel = Path(sys.executable).parent / "auditwheel"
    if not auditwheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "auditwheel"], check=True)
    shown = subprocess.run([str(auditwheel), "show", str(ffcv_wheel)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert 'is consistent with the following platform tag: "manylinux_2_35_x86_64"' in text
    listing = subprocess.run(["unzip", "-l", str(ffcv_wheel)], capture_output=True, text=True).stdout
    assert "ffcv.libs/libturbojpeg" in listing and "ffcv.libs/libopencv_imgproc" in listing


def test_wheel_imports_and_decodes_in_a_fresh_venv(ffcv_wheel, tmp_path):
    venv = tmp_path / "fresh"
    # without a pip of its own (installing one takes seconds of the suite): this process's pip installs into it
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(ffcv_wheel)], check=True)
    # torch, numpy and numba come from the project's venv, placed *after* the fresh site-packages, as a site
    # directory: its own .pth files run, setuptools' among them, which gives Python 3.12+ the distutils that
    # ffcv imports (torch requires setuptools, so every environment with torch has it)
    fresh_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    project_site = sysconfig.get_paths()["purelib"]
    (Path(fresh_site) / "project_deps.pth").write_text(f"import site; site.addsitedir({project_site!r})\n")
    probe = (
        "import io, numpy as np, ffcv, ffcv.libffcv as lib; from PIL import Image\n"
        "buffer = io.BytesIO(); Image.fromarray(np.full((16, 24, 3), 200, np.uint8)).save(buffer, 'JPEG')\n"
        "data = np.frombuffer(buffer.getvalue(), np.uint8); out = np.zeros((16, 24, 3), np.uint8)\n"
        "assert lib.imdecode(data, out, 16, 24, 16, 24, 0, 0, 1, 1, False, False) == 0\n"
        "print(ffcv.__file__, int(out.mean()))\n")
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    location, mean = result.stdout.split()
    assert location.startswith(fresh_site) and abs(int(mean) - 200) <= 2
    ldd = subprocess.run(["ldd", *Path(fresh_site, "ffcv").glob("_libffcv*.so")], capture_output=True,
                         text=True).stdout
    turbojpeg = next(line for line in ldd.splitlines() if "turbojpeg" in line)
    assert "ffcv.libs" in turbojpeg  # the bundled copy, not the system's

"""Shared fixtures: a tiny real-photo beton pair built once per test session."""
import io
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from pipeline.gc_freeze import imports_frozen

with imports_frozen():  # a worker's imports, out of the collections its tests start (pipeline/gc_freeze.py)
    import torch

if not torch.cuda.is_available():  # Triton kernels run on CPU tensors, interpreted; set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
# inductor compiles in this process (and in the scripts the tests start), not in a pool of worker processes that
# each import torch first: seconds of CPU per compiling process, on a suite that is bound by its 2 cores
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# numba compiles the decode pipeline of every ffcv loader, and the suite builds dozens, in this process and in the
# scripts it starts: 5-6 s per loader at LLVM's -O3 on 2 cores, a third less at -O1, which computes the same pixels
# (at -O0 numba stops inlining the shrink's helpers and can no longer cache it). numba's on-disk cache does not key
# on the level, so these tests cache in a folder of their own, never where a user's run would load -O1 code from.
if "NUMBA_OPT" not in os.environ and "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_OPT"] = "1"
    os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / f"ssenet-tests-numba-O1-{os.getuid()}")

with imports_frozen():
    from dataset_prep.beton import WriteSettings, write_beton
    from dataset_prep.image_folder import find_split
    from dataset_prep.write_imagenet import main as write_main
    from ffcv.loader import Loader
    from pipeline.kernels import interpreting, triton_available
    from triton_interpreter import speed_up_interpreter

if interpreting() and triton_available():
    speed_up_interpreter()  # without the work the interpreter repeats or discards (measured there)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_betons(tmp_path_factory) -> Path:
    """10 classes x 12 train photos (train.beton), 49 val photos (val.beton: odd, so shards are uneven)."""
    root = tmp_path_factory.mktemp("tiny")
    assert write_main(["--out-dir", str(root), "--sample-train", "12", "--sample-val", "5", "--max-res", "64",
                       "--workers", "2", "--split", "train"]) == 0
    val_files = find_split(root / "images" / "val").files[:49]
    write_beton(val_files, find_split(root / "images" / "val").classes, root / "val.beton",
                WriteSettings(max_res=64, workers=2), "tiny", 0)
    return root


# numba's finalizer of the dispatchers in ffcv's compiled pipelines raises a KeyError when a loader is collected
# while other pipelines live in the process; pytest then reports it at whichever test runs then. Every loader built
# in a test process (by a test, or by the trainer a test runs in-process) is kept until the process ends, where
# numba skips those finalizers.
_LOADERS = []
_build_loader = Loader.__init__


def _build_and_keep(self, *args, **kwargs):
    _build_loader(self, *args, **kwargs)
    _LOADERS.append(self)


Loader.__init__ = _build_and_keep


def tiny_settings(betons: Path, run_dir: Path, *extra: str) -> list:
    """Command-line settings for a seconds-long CPU run on the tiny betons."""
    return ["--cfg", str(REPO / "recipes" / "sample.yaml"),
            f"--data.train_dataset={betons / 'train.beton'}", f"--data.val_dataset={betons / 'val.beton'}",
            "--resolution.min_res=32", "--resolution.max_res=32", "--resolution.val_res=32",
            "--training.batch_size=16", "--validation.batch_size=10", "--data.num_workers=1",
            "--logging.progress=false", f"--logging.run_dir={run_dir}", *extra]


def ctrl_c_as_in_a_terminal() -> None:
    """Give this process Ctrl-C's default action, as a terminal's foreground job has. The suite may itself run as
    a shell's background job (`make test &`), where SIGINT is ignored and stays ignored in every child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def terminal_ctrl_c():
    """This test process raises KeyboardInterrupt on SIGINT, as a program started in a terminal does."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def tar_bytes(members) -> bytes:
    """An uncompressed tar of (name, bytes) members, in memory: ImageNet's tars in miniature."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def run_script(arguments: list, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *arguments], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, **kwargs)

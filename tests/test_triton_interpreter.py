"""The suite's interpreter speed-ups (tests/triton_interpreter.py): installed, the same values, one patch per module,
the interpreter's numpy dtypes from a table built once, no overflow checks whose asserts would be dropped."""
import dataclasses

import numpy as np
import pytest
import torch

from pipeline.kernels import interpreting

pytest.importorskip("triton")
if not interpreting():
    pytest.skip("the kernels run compiled here, not interpreted", allow_module_level=True)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

import triton_interpreter  # noqa: E402


@triton.jit
def doubled(x):
    return x * 2.0


@triton.jit
def row_sums_kernel(x_ptr, out_ptr, WIDTH: tl.constexpr):
    row = tl.program_id(0)
    values = tl.load(x_ptr + row * WIDTH + tl.arange(0, WIDTH))
    total = tl.sum(doubled(values), axis=0) + tl.sum(doubled(doubled(values)), axis=0)  # 6 x the row's sum
    tl.store(out_ptr + row, total)


def test_the_suite_runs_the_kernels_with_the_speed_up():
    """conftest installs it for the pinned Triton: a newer one needs the skip read again against its interpreter."""
    assert triton.__version__ == triton_interpreter.TRITON_VERSION, "read triton_interpreter.py against this Triton"
    assert interpreter._patch_lang.__name__ == "patch_unless_patched"
    assert interpreter._get_np_dtype.__name__ == "np_dtype"
    assert interpreter.interpreter_builder.options.sanitize_overflow is False


@triton.jit
def times_million_kernel(x_ptr, out_ptr):
    offsets = tl.arange(0, 4)
    tl.store(out_ptr + offsets, tl.load(x_ptr + offsets) * 1000000)


@pytest.mark.parametrize("sanitize", [True, False])
def test_an_int32_overflow_wraps_with_or_without_the_overflow_checks(sanitize, monkeypatch):
    """Why the checks are skipped: with debug off, as the interpreter runs, a checked int32 product past 2**31
    wraps as an unchecked one does, without an error. A Triton whose checks fire here needs them back."""
    builder = interpreter.interpreter_builder
    monkeypatch.setattr(builder, "options", dataclasses.replace(builder.options, sanitize_overflow=sanitize))
    assert builder.options.debug is False
    x = torch.full((4,), 3000, dtype=torch.int32)
    out = torch.empty_like(x)
    times_million_kernel[(1,)](x, out)
    assert (out == 3000 * 1000000 - 2**32).all()


def test_the_dtype_table_gives_the_interpreters_storage_types():
    """bf16 kept as uint16 and pointers as uint64, as the interpreter's own lookup does; a block as its elements;
    asked twice, the table's answer."""
    expected = [(tl.float32, np.float32), (tl.bfloat16, np.uint16), (tl.float16, np.float16), (tl.int1, np.bool_),
                (tl.int32, np.int32), (tl.uint64, np.uint64), (tl.pointer_type(tl.float32), np.uint64)]
    for tt_dtype, np_dtype in expected:
        for _ in range(2):
            assert interpreter._get_np_dtype(tt_dtype) == np.dtype(np_dtype), tt_dtype
            assert interpreter._get_np_dtype(tl.block_type(tt_dtype, [4, 8])) == np.dtype(np_dtype), tt_dtype


def test_each_language_module_is_patched_once_per_launch_and_values_are_unchanged(monkeypatch):
    """Each program calls `doubled` three times and tl.sum twice. Patches per launch: the kernel's (triton.language:
    4 scans) and tl.sum's first (its module sees triton.language.core too: 6 scans), as many for 6 programs as for
    3. Without the skip, every helper call of every program scanned again: 76 scans for 3 programs."""
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    out = torch.empty(6)
    row_sums_kernel[(6,)](x, out, WIDTH=4)  # the first launch rewrites tl.sum, which adds names to its module
    assert torch.equal(out, 6 * x.sum(dim=1))
    scans = []
    scan = interpreter._patch_builtin
    monkeypatch.setattr(interpreter, "_patch_builtin", lambda *args: scans.append(1) or scan(*args))
    for programs in (3, 6):
        scans.clear()
        out = torch.zeros(6)
        row_sums_kernel[(programs,)](x, out, WIDTH=4)
        assert torch.equal(out[:programs], 6 * x[:programs].sum(dim=1)) and not out[programs:].any()
        assert len(scans) == 10, programs

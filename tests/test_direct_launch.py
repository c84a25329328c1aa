"""pipeline/kernels/direct_launch.py: later launches of a compiled kernel skip Triton's per-call argument handling
and hand its launcher exactly what Triton's own launch hands it. Checked with a kernel really compiled for sm90
(no GPU needed: a stand-in driver records the launcher's arguments; tests/launch_probe.py); on a GPU,
test_gpu.py compares the fused tail's outputs with and without."""
import ast
import os

import pytest
import torch

from conftest import run_script

pytest.importorskip("triton")
from pipeline.kernels import direct_launch, se_launch  # noqa: E402  (imports triton)

COMPILING = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}


def probe() -> dict:
    result = run_script(["tests/launch_probe.py"], env=COMPILING, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])


def test_direct_launches_hand_the_launcher_what_triton_handed_it_and_follow_its_specialisation():
    """One probe process (a start and two sm90 compilations: seconds of the suite, which xdist would pay once per
    worker for a module-scoped fixture)."""
    facts = probe()
    aligned = facts["aligned"]
    # the first launch compiles, the second is watched; the third and fourth skip Triton's run
    assert aligned["triton_runs"] == 2 and len(aligned["calls"]) == 4
    first, *later = aligned["calls"]
    assert all(call == first for call in later)
    grid, stream, args, tail = first[:3], first[3], first[9:13], first[13:]
    assert grid == (2, 1, 1) and stream == facts["stream"]
    assert [arg[0] for arg in args[:2]] == ["tensor", "tensor"] and args[2:] == (100, 2.0)
    assert tail == (64, 0)  # BLOCK as given, SHIFT's default: every parameter, constexprs included

    # the same arguments but for the pointers' alignment: a signature of its own, compiled and watched by Triton
    unaligned = facts["unaligned"]
    assert unaligned["triton_runs"] == 2 and len(unaligned["calls"]) == 3
    assert facts["compiled"] == 2  # Triton's own cache: a kernel per alignment, which a direct launch must follow

    # SSENET_DIRECT_LAUNCH=0: every launch through Triton, with the same calls
    disabled = facts["disabled"]
    assert disabled["triton_runs"] == 3 and disabled["calls"] == aligned["calls"][:3]


def test_the_interpreter_keeps_tritons_path(monkeypatch):
    monkeypatch.setattr(direct_launch, "_SIGNATURES", {})
    z = torch.randn(2, 16, 3, 3).to(memory_format=torch.channels_last)
    channels, hidden = 16, 4
    ones, zeros = torch.ones(channels), torch.zeros(channels)
    for _ in range(3):
        out, _ = se_launch.forward(z, torch.randn_like(z), ones, zeros, zeros.clone(), ones.clone(),
                                   torch.randn(hidden, channels), torch.randn(channels, hidden), None, None, None,
                                   0, True, 1e-5, 1e-5)
    assert torch.isfinite(out).all()
    # nothing compiled, so nothing to launch directly: every signature stays on Triton's path
    assert direct_launch._SIGNATURES and set(direct_launch._SIGNATURES.values()) == {None}

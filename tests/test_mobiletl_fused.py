"""The sign rule through the fused kernels: a scheme file with ``sign_from`` and bias-only
training keeps most blocks fused in the live forward (their masks are emitted row by row by
tt_fused_block_s8 with mask_hi = SIGN_MASK_HI through the existing mask_lo/mask_hi params)
and fuses backward steps (E→D, P→D→E, which read the saved bits); the host C gives the
simulator's bytes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from codegen.backends import RunSpec, run_backend
from tinytrain.datasets import fashion_mnist
from tinytrain.models.ship import MBV2, shipped
from tinytrain.train.compile import CompileOptions, compile_model
from tinytrain.train.kernels.mask import SIGN_MASK_HI


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_fused_blocks_with_sign_masks_match_simulator(tmp_path: Path) -> None:
    scheme = tmp_path / "sign-bias.json"
    scheme.write_text(
        json.dumps(
            {"name": "sign-bias", "default": "bias", "layers": [{"layer": -1, "update": "full"}], "sign_from": 4}
        )
    )
    c = compile_model(shipped(MBV2), CompileOptions(str(scheme), classes=10, sample_bytes=784))
    prog = c.program
    live_fused = [u for u in prog.fused.blocks if u.start >= prog.first_live_op]
    signs = {st.op_index for st in prog.all_steps if st.params.clamp is not None and st.params.clamp[1] == SIGN_MASK_HI}
    assert any(set(u.op_indices) & signs for u in live_fused)
    assert any(st.fused is not None and {p.op_index for p in st.parts} & signs for st in prog.backward)
    assert any(not p.sign_act for p in c.scheme.layers) and any(p.sign_act for p in c.scheme.layers)
    x, y = fashion_mnist("train")
    spec = RunSpec(x[:8], y[:8].astype(np.int64), x[1000:1002], seed=5, lr=0.01)
    sim = run_backend("sim", c, spec)
    host = run_backend("host", c, spec, work_dir=tmp_path / "host")
    assert sim.steps == host.steps and np.array_equal(sim.test_logits, host.test_logits)
    for name, t in sim.tensors.items():
        assert np.array_equal(t, host.tensors[name]), name

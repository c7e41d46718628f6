"""Issue 10: no compile in the render loop. Under the stand-in GPU of kernels/compile_check.py
(sm_90, no GPU), every kernel launch of whole renders is turned into Triton's own binder call,
which gives the variant (cache key: signature specialisation, constexprs, options) a GPU would
compile. Views with crops of other sizes and offsets, and zoom, must need exactly the variants of
the full-frame render: tile sizes (M, TH, TW) and the tile's place in the frame buffer are left
unspecialised (do_not_specialize), so the first tile compiles everything a render needs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]

# Runs with TRITON_INTERPRET=0 (the binder of real JITFunctions), prints {view: [variant keys]}.
_SCRIPT = r"""
import json, sys
import torch
from triton.runtime import driver
from triton.runtime.jit import JITFunction, compute_cache_key
from triton import knobs
from digan.config import generator_preset
from digan.networks import Generator
from digan.view import View
from engine.plan import make_plan
from engine.renderer import Renderer
from engine.request import RenderRequest
from kernels import compile_check as C

keys = {}
current = [None]

def record(self, *args, grid, warmup, **kwargs):
    kwargs["debug"] = kwargs.get("debug", self.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    device = driver.active.get_current_device()
    _, key_cache, _, _, binder = self.device_caches[device]
    _, spec, options = binder(*args, **kwargs)
    keys.setdefault(current[0], set()).add(self.fn.__name__ + ":" + str(compute_cache_key(key_cache, spec, options)))
    return None

torch.manual_seed(0)
G = Generator(generator_preset("tiny-32")).eval()
views = {"full": View(), "crop": View(top=3, height=14, left=5, width=18),
         "zoom-crop": View(scale=2, top=7, height=50, left=9, width=41),
         "zoom-out": View(top=-5, height=40, left=-3, width=37)}
precision = sys.argv[1]
with C.stand_in_gpu(C._Capture(90)):
    saved, JITFunction.run = JITFunction.run, record
    try:
        for name, view in views.items():
            current[0] = name
            req = RenderRequest(seeds=[0, 1], frames=5, view=view, precision=precision, backend="triton",
                                device="cpu")
            # several tile shapes per view: row bands of <= 8 rows, chunks of 2 frames (last: 1)
            plan = make_plan(G.cfg, view, 5, 1 << 30, act_bytes=4, max_frames_per_chunk=2, max_tile_rows=8 * 64)
            r = Renderer(G, req, plan)
            for k in range(2):
                for chunk in plan.chunks():
                    r.render_chunk(r.video_weights(k), chunk)
    finally:
        JITFunction.run = saved
print("@@" + json.dumps({k: sorted(v) for k, v in keys.items()}))
"""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_crops_and_zoom_need_no_new_variant(precision):
    r = subprocess.run([sys.executable, "-c", _SCRIPT, precision], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "TRITON_INTERPRET": "0"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    keys = json.loads(r.stdout.split("@@", 1)[1])
    full = set(keys["full"])
    # the render launches the modulation, the fused linear layers and the ToRGB into the buffer
    names = {k.split(":", 1)[0] for k in full}
    assert {"_fmm_linear_kernel"} <= names, names
    for view in ("crop", "zoom-crop", "zoom-out"):
        assert set(keys[view]) == full, (view, sorted(set(keys[view]) ^ full))

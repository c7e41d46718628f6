"""Work per frame: multiply-adds of every 1x1 layer at the sizes a view really renders."""
from __future__ import annotations

from dataclasses import dataclass

from digan.config import GeneratorConfig
from digan.program import generator_program
from digan.view import View, level_rects


@dataclass
class FrameWork:
    macs: int          # multiply-adds of all GEMMs per frame
    macs_unsplit: int  # the same with conv0 run on upsampled features (the official way)
    sincos: int        # embedding values (sin + cos) per frame

    @property
    def flops(self) -> int:
        return 2 * self.macs


def frame_work(cfg: GeneratorConfig, view: View = View()) -> FrameWork:
    prog = generator_program(cfg)
    rects = level_rects(view.final_rect(cfg.img_resolution), prog.num_levels)
    pixels = [(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in rects]
    macs = unsplit = sincos = 0
    for layer in prog.layers:
        p = pixels[layer.level]
        sincos += p * layer.emb
        if layer.kind == "split":     # features part at the parent level, embedding part here
            macs += pixels[layer.level - 1] * layer.feat * layer.c_out + p * layer.emb * layer.c_out
        else:
            macs += p * layer.c_in * layer.c_out
        unsplit += p * layer.c_in * layer.c_out
    return FrameWork(macs=macs, macs_unsplit=unsplit, sincos=sincos)

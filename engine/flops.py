"""Work per frame: multiply-adds of every 1x1 layer at the sizes a view really renders."""
from __future__ import annotations

from dataclasses import dataclass

from digan.config import GeneratorConfig
from digan.view import View, level_rects, num_levels


@dataclass
class FrameWork:
    macs: int          # multiply-adds of all GEMMs per frame
    macs_unsplit: int  # the same with conv0 run on upsampled features (the official way)
    sincos: int        # embedding values (sin + cos) per frame

    @property
    def flops(self) -> int:
        return 2 * self.macs


def frame_work(cfg: GeneratorConfig, view: View = View()) -> FrameWork:
    rects = level_rects(view.final_rect(cfg.img_resolution), num_levels(cfg.img_resolution, cfg.input_resolution))
    pixels = [(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in rects]
    macs = unsplit = sincos = 0
    level, prev_c = 0, 0
    for res in cfg.block_resolutions:
        C = cfg.channels(res)
        up = res > cfg.input_resolution
        if up:
            level += 1
        p = pixels[level]
        E2 = cfg.emb_channels if cfg.has_embedding(res) else 0
        sincos += p * E2
        if res == 4:
            first = p * E2 * C
            macs += first
            unsplit += first
        else:
            feat = (pixels[level - 1] if up else p) * prev_c * C
            macs += feat + p * E2 * C
            unsplit += p * (prev_c + E2) * C
        rest = p * C * C * (cfg.num_conv(res) - 1) + p * C * cfg.img_channels  # convs after the first, torgb
        macs += rest
        unsplit += rest
        prev_c = C
    return FrameWork(macs=macs, macs_unsplit=unsplit, sincos=sincos)

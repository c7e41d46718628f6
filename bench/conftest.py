"""pytest set-up for bench/: after pytest-benchmark's own table, a ratio table (x baseline,
frames/s, GFLOP/s, GB/s), and with `--bench-out DIR` the results as CSV and JSON there
(bench-<date>-<rev>.csv/.json; every row names its device, date and git revision).

    pytest bench/ --benchmark-only --benchmark-enable --bench-out build/bench    # what `make bench` runs
"""
from __future__ import annotations

from pathlib import Path

import pytest

_ROWS = pytest.StashKey[list]()      # the rows of the benchmarks that ran
_META = pytest.StashKey[dict]()      # device ('cpu' / 'cuda') -> the run's metadata


def pytest_addoption(parser):
    parser.addoption("--bench-out", default=None, metavar="DIR",
                     help="write the benchmark results as CSV and JSON (device, date, git revision) into DIR")


def pytest_configure(config):
    config.stash[_ROWS] = []


def _meta(config, device: str) -> dict:
    """The run's metadata for a device ('cpu' / 'cuda'), computed once per device."""
    cache = config.stash.setdefault(_META, {})
    if device not in cache:
        import torch

        from bench.envinfo import device_name, git_rev
        from bench.export import run_meta
        rev, dirty = git_rev()
        cache[device] = run_meta(device_name(torch.device(device)), "gpu" if device == "cuda" else "cpu", rev, dirty,
                                 torch=torch.__version__, threads=torch.get_num_threads())
    return cache[device]


@pytest.fixture(autouse=True)
def _record_benchmark(request):
    """After each benchmark that ran (not skipped, not disabled), keep its row for the summary."""
    yield
    bm = request.node.funcargs.get("benchmark")
    meta = getattr(bm, "stats", None)
    if bm is None or getattr(bm, "disabled", True) or not meta:
        return
    from bench.export import benchmark_row
    s = meta.stats
    stats = dict(median=s.median, mean=s.mean, min=s.min, max=s.max, stddev=s.stddev, rounds=s.rounds)
    extra = dict(bm.extra_info)
    request.config.stash[_ROWS].append(
        benchmark_row(request.node.name, bm.group, stats, extra, _meta(request.config, extra.get("device", "cpu"))))


@pytest.hookimpl(trylast=True)   # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, config):
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    from bench.export import add_speedups, ratio_table, write_csv, write_json
    add_speedups(rows)
    tr = terminalreporter
    tr.write_sep("-", f"ratios (same run; {rows[0]['device']}, rev {rows[0]['rev']}"
                      + ("+dirty" if rows[0]["dirty"] else "") + ")")
    tr.write_line(ratio_table(rows))
    out = config.getoption("--bench-out")
    if out:
        stem = f"bench-{rows[0]['date'].replace(':', '')}-{rows[0]['rev']}"
        meta = {k: rows[0][k] for k in ("device", "device_kind", "date", "rev", "dirty", "load_avg", "torch")}
        for path in (write_csv(Path(out) / f"{stem}.csv", rows), write_json(Path(out) / f"{stem}.json", rows, meta)):
            tr.write_line(f"wrote {path}")

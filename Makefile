# Two commands on a fresh machine (see README): `make render` and `make test`.
# Each installs what it needs first: Debian's FFmpeg dev libraries for the native encoder, the
# Python packages pinned in requirements.txt (the one list; it pins the CPU torch wheel: any other
# torch spec pulls gigabytes of CUDA packages), then this repo. Any interpreter works, e.g. a
# virtual environment's: `make test PY=venv/bin/python` (what .ci/run does).
PY ?= python3
PIP := $(PY) -m pip
REQUIREMENTS := requirements.txt
APT_PKGS := pkg-config libavcodec-dev libavformat-dev libswscale-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# One stamp per interpreter (its prefix and version): another python, or a new virtual
# environment, must not find an old stamp and skip its installs.
PY_ID := $(shell $(PY) -c 'import hashlib, sys; print(hashlib.sha1((sys.prefix + sys.version).encode()).hexdigest()[:12])' 2>/dev/null)
ifeq ($(PY_ID),)
$(error PY=$(PY) is not a working Python interpreter)
endif
STAMP := build/.deps-stamp-$(PY_ID)

.PHONY: deps render test test-fast lint bench plots bench-sweep clean

$(STAMP): $(REQUIREMENTS) setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h) Makefile
	@if command -v apt-get >/dev/null && ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(APT_PKGS); fi
	$(PIP) install -q -r $(REQUIREMENTS)
	$(PIP) install -q --no-build-isolation -e .
	$(PY) setup.py -q build_ext --inplace
	@mkdir -p build && touch $(STAMP)

deps: $(STAMP)

# Render a 2-second 128x128 video with the default model (the 32x32 demo model at scale 4).
render: deps
	$(PY) -m engine.cli render --seeds 1 --frames 32 --fps 16 --scale 4 --output renders/default.mp4 --preview

test: deps
	$(PY) -m pytest -q

# The edit loop: everything not marked slow (the full suite is `make test`).
test-fast: deps
	$(PY) -m pytest -q -m "not slow"

# ruff (pinned in requirements.txt; rules in pyproject.toml). Reports only; fixes nothing.
lint: deps
	$(PY) -m ruff check .

# CPU-sized benchmarks (pytest-benchmark, bench/test_bench_*.py; a few minutes on 2 idle cores):
# pytest-benchmark's table per group, then a ratio table (x eager / x baseline, frames/s, GFLOP/s,
# GB/s). Results go to $(BENCH_OUT) as bench-<date>-<rev>.csv and .json (every row: device, date,
# git revision); build/ is outside the source tree. `make bench BENCH_OUT=` writes none;
# BENCH_ARGS passes pytest flags, e.g. BENCH_ARGS="-k engine" or "--benchmark-json=out.json".
# The scripts print the same way and take --csv FILE / --json FILE (python bench/bench_render.py
# --help); only their --write touches the source tree (bench/results/, bench/RESULTS.md).
BENCH_OUT ?= build/bench
bench: deps
	$(PY) -m pytest -q bench/ --benchmark-only --benchmark-enable $(if $(BENCH_OUT),--bench-out $(BENCH_OUT)) $(BENCH_ARGS)

# The README's plots from the rows in bench/results/*.jsonl (matplotlib, seconds):
# docs/bench_render_<device>.png (frames/s vs resolution and vs frames) and
# docs/bench_kernels_<device>.png (GFLOP/s or TFLOP/s, GB/s per op vs shape).
# `make bench-sweep` first measures new rows on this machine and appends them (--write), then plots:
# on a CPU 1 thread timed by the process's CPU time (BENCH_SWEEP_ARGS; steady on a shared machine:
# ~1.5 min of CPU, 7 + 4 min wall at load 14 on 2 cores); on a GPU `make bench-sweep BENCH_SWEEP_ARGS=`.
BENCH_SWEEP_ARGS ?= --threads 1 --clock cpu
plots: deps
	$(PY) bench/plot.py

bench-sweep: deps
	$(PY) bench/bench_render.py --sweep --reps 1 $(BENCH_SWEEP_ARGS) --write
	$(PY) bench/bench_kernels.py --sweep $(BENCH_SWEEP_ARGS) --write
	$(PY) bench/plot.py

.PHONY: compile-check gpu-check
# Compile every Triton kernel variant the launchers launch, for sm_90 and sm_80, without a GPU
# (kernels/compile_check.py; ~3 min on 2 idle cores): fails on a compile error, spills, shared
# memory over the arch's limit, or a bf16/tf32 GEMM that is not wgmma on sm_90.
compile-check: deps
	TRITON_INTERPRET=0 $(PY) -m kernels.compile_check --out build/compile-report.json

# On a lent GPU, from the checkout (nothing installed there): GPU tests, render and kernel
# benchmarks in <= 8 min, written to bench/RESULTS.md. Without CUDA it says so and exits 0.
gpu-check:
	PYTHONPATH=. $(PY) bench/gpu_check.py --write

clean:
	rm -rf build *.egg-info engine/_framestream*.so renders

# Two commands on a fresh machine (see README): `make render` and `make test`.
# Each installs what it needs first: Debian's FFmpeg dev libraries for the native encoder, the
# pinned CPU torch wheel (any other torch spec pulls gigabytes of CUDA packages), then this repo.
PY ?= python3
PIP := $(PY) -m pip
APT_PKGS := pkg-config libavcodec-dev libavformat-dev libswscale-dev
PY_PKGS := torch==2.13.0 triton numpy av safetensors pybind11 pytest pytest-benchmark
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := build/.deps-stamp

.PHONY: deps render test bench clean

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h) Makefile
	@if command -v apt-get >/dev/null && ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(APT_PKGS); fi
	$(PIP) install -q $(PY_PKGS)
	$(PIP) install -q --no-build-isolation -e .
	$(PY) setup.py -q build_ext --inplace
	@mkdir -p build && touch $(STAMP)

deps: $(STAMP)

# Render a 2-second 128x128 video with the default model (the 32x32 demo model at scale 4).
render: deps
	$(PY) -m engine.cli render --seeds 1 --frames 32 --fps 16 --scale 4 --output renders/default.mp4 --preview

test: deps
	$(PY) -m pytest -q

bench: deps
	$(PY) -m pytest -q bench/ --benchmark-only --benchmark-enable

clean:
	rm -rf build *.egg-info engine/_framestream*.so renders

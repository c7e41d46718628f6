"""Installs the `digan`, `engine` and `kernels` packages, the `digan` command, and (when FFmpeg's
development libraries are found through pkg-config) the native frame-stream extension
`engine._framestream` from csrc/.  Without FFmpeg the extension is skipped with a message and the
pure-Python PyAV sink is used instead; set DIGAN_REQUIRE_NATIVE=1 to make that an error."""
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

FFMPEG_LIBS = ["libavcodec", "libavformat", "libavutil", "libswscale"]
HERE = os.path.dirname(os.path.abspath(__file__))


def _requirements():
    """{package name: its line} of requirements.txt, the one list of pinned third-party packages
    (the Makefile and .ci/run install from the same file)."""
    reqs = {}
    with open(os.path.join(HERE, "requirements.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                reqs[re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower()] = line
    return reqs


REQUIREMENTS = _requirements()


def _pins(*names):
    return [REQUIREMENTS[n] for n in names]


def _pkg_config(flag):
    out = subprocess.run(["pkg-config", flag, *FFMPEG_LIBS], check=True, capture_output=True, text=True)
    return out.stdout.split()


def native_extensions():
    sources = [os.path.join("csrc", name) for name in ("frame_stream.cpp", "bindings.cpp")]
    if not all(os.path.exists(src) for src in sources):
        return []
    try:
        if shutil.which("pkg-config") is None:
            raise RuntimeError("pkg-config not found")
        cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
        from pybind11.setup_helpers import Pybind11Extension
    except Exception as exc:
        msg = f"digan: not building the native encoder ({exc}); the PyAV sink will be used"
        if os.environ.get("DIGAN_REQUIRE_NATIVE") == "1":
            raise SystemExit(msg)
        print(msg, file=sys.stderr)
        return []
    return [
        Pybind11Extension(
            "engine._framestream",
            sources,
            include_dirs=["csrc"],
            depends=[os.path.join("csrc", "frame_stream.h")],
            cxx_std=17,
            extra_compile_args=[f for f in cflags] + ["-O2"],
            extra_link_args=libs,
        )
    ]


setup(
    name="digan-engine",
    version="0.1.0",
    description="Fast, dependable rendering and training for DIGAN video INR-GANs",
    packages=find_packages(include=["digan", "digan.*", "engine", "engine.*", "kernels", "kernels.*"]),
    package_data={"digan": ["assets/*.safetensors"]},
    python_requires=">=3.10",
    install_requires=_pins("torch", "numpy", "safetensors", "tqdm", "pillow"),
    extras_require={"video": _pins("av"), "triton": _pins("triton"),
                    "test": _pins("pytest", "pytest-benchmark", "scipy", "matplotlib", "av", "triton"),
                    "lint": _pins("ruff")},
    ext_modules=native_extensions(),
    entry_points={"console_scripts": ["digan=engine.cli:main"]},
)

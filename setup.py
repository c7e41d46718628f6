"""Installs the `digan`, `engine` and `kernels` packages, the `digan` command, and (when FFmpeg's
development libraries are found through pkg-config) the native frame-stream extension
`engine._framestream` from csrc/.  Without FFmpeg the extension is skipped with a message and the
pure-Python PyAV sink is used instead; set DIGAN_REQUIRE_NATIVE=1 to make that an error."""
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

FFMPEG_LIBS = ["libavcodec", "libavformat", "libavutil", "libswscale"]


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
    except Exception as exc:  # noqa: BLE001 - any failure means: build without the extension
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
    install_requires=["torch", "numpy", "safetensors"],
    extras_require={"video": ["av"], "triton": ["triton"]},
    ext_modules=native_extensions(),
    entry_points={"console_scripts": ["digan=engine.cli:main"]},
)

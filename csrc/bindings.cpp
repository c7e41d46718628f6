// engine._framestream: pybind11 bindings of the frame stream (frame_stream.h).
//
// Every buffer argument is checked here (dtype, shape, contiguity) with a message naming the
// check; the C++ object then only sees raw pointers.  Calls that can block run with the GIL
// released, so Python threads (the renderer) keep running while the encoder thread works.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "frame_stream.h"

namespace py = pybind11;
using framestream::FrameStream;
using framestream::StreamError;

namespace {

PyObject* g_encode_error = nullptr;

std::string shape_text(const std::vector<py::ssize_t>& s) {
    std::string t = "(";
    for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
    return t + (s.size() == 1 ? ",)" : ")");
}

void check_uint8(const py::buffer_info& info, const std::string& name) {
    if (info.itemsize != 1 || (info.format != "B" && info.format != "c"))
        throw std::invalid_argument(name + ": expected dtype uint8 (buffer format 'B'), got format '" + info.format +
                                    "' with itemsize " + std::to_string(info.itemsize));
}

void check_contiguous(const py::buffer_info& info, const std::string& name) {
    py::ssize_t expect = 1;
    for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
        if (info.shape[d] != 1 && info.strides[d] != expect)
            throw std::invalid_argument(name + ": expected a C-contiguous array, got strides " +
                                        shape_text(info.strides) + " for shape " + shape_text(info.shape));
        expect *= info.shape[d];
    }
}

// One frame: RGB (H, W, 3), or I420 as (H*3/2, W) or flat; uint8 and C-contiguous.
void push(FrameStream& s, const py::buffer& frame) {
    s.check_open("push");
    py::buffer_info info = frame.request();
    check_uint8(info, "frame");
    const py::ssize_t H = s.height(), W = s.width();
    if (!s.yuv_input()) {
        std::vector<py::ssize_t> want = {H, W, 3};
        if (info.ndim != 3 || info.shape != want)
            throw std::invalid_argument("frame: expected shape " + shape_text(want) +
                                        " (height, width, RGB) uint8, got " + shape_text(info.shape));
    } else {
        std::vector<py::ssize_t> want = {H * 3 / 2, W};
        bool ok = (info.ndim == 2 && info.shape == want) ||
                  (info.ndim == 1 && info.shape[0] == static_cast<py::ssize_t>(s.frame_bytes()));
        if (!ok)
            throw std::invalid_argument("frame: expected I420 yuv420p of shape " + shape_text(want) + " or (" +
                                        std::to_string(s.frame_bytes()) + ",), got " + shape_text(info.shape) +
                                        " (use push_planes for separate planes)");
    }
    check_contiguous(info, "frame");
    const uint8_t* src = static_cast<const uint8_t*>(info.ptr);
    py::gil_scoped_release nogil;  // `frame` stays referenced by the caller for the whole call
    s.push(src);
}

// YUV 4:2:0 as three planes: y (H, W), u and v (H/2, W/2).
void push_planes(FrameStream& s, const py::buffer& y, const py::buffer& u, const py::buffer& v) {
    s.check_open("push_planes");
    if (!s.yuv_input())
        throw std::invalid_argument("push_planes: this stream takes rgb24 frames (open it with input_format='yuv420p')");
    py::buffer_info iy = y.request(), iu = u.request(), iv = v.request();
    const py::ssize_t H = s.height(), W = s.width();
    const std::vector<py::ssize_t> wy = {H, W}, wc = {H / 2, W / 2};
    const char* names[3] = {"y", "u", "v"};
    py::buffer_info* infos[3] = {&iy, &iu, &iv};
    for (int p = 0; p < 3; ++p) {
        check_uint8(*infos[p], names[p]);
        const auto& want = p == 0 ? wy : wc;
        if (infos[p]->ndim != 2 || infos[p]->shape != want)
            throw std::invalid_argument(std::string(names[p]) + ": expected plane shape " + shape_text(want) +
                                        ", got " + shape_text(infos[p]->shape));
        check_contiguous(*infos[p], names[p]);
    }
    const auto* py_ = static_cast<const uint8_t*>(iy.ptr);
    const auto* pu = static_cast<const uint8_t*>(iu.ptr);
    const auto* pv = static_cast<const uint8_t*>(iv.ptr);
    py::gil_scoped_release nogil;
    s.push_planes(py_, pu, pv);
}

}  // namespace

PYBIND11_MODULE(_framestream, m) {
    m.doc() = "Native frame stream: bounded queue of frame slots + an FFmpeg encoder thread.";

    g_encode_error = PyErr_NewException("engine._framestream.EncodeError", PyExc_RuntimeError, nullptr);
    m.attr("EncodeError") = py::handle(g_encode_error);  // the module keeps a reference; never freed
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const StreamError& e) {
            if (e.os_errno > 0) {
                py::object exc = py::reinterpret_steal<py::object>(
                    Py_BuildValue("(iss)", e.os_errno, e.what(), e.path.c_str()));
                PyErr_SetObject(PyExc_OSError, exc.ptr());
            } else {
                PyErr_SetString(g_encode_error, e.what());
            }
        }
    });

    py::class_<FrameStream>(m, "FrameStream")
        .def(py::init<const std::string&, int, int, int, int, const std::string&, const std::string&,
                      const std::string&, const std::string&, const std::map<std::string, std::string>&,
                      const std::map<std::string, std::string>&, int, int>(),
             py::arg("path"), py::arg("width"), py::arg("height"), py::arg("fps_num"), py::arg("fps_den"),
             py::arg("codec"), py::arg("format") = "", py::arg("pix_fmt") = "yuv420p",
             py::arg("input_format") = "rgb24", py::arg("codec_options") = std::map<std::string, std::string>(),
             py::arg("format_options") = std::map<std::string, std::string>(), py::arg("gop") = 0,
             py::arg("queue_size") = 8,
             "Open `path` and start the encoder thread. `format`: muxer name (mp4, matroska, mov; empty: "
             "from the extension); `pix_fmt`: the encoder's pixel format; `input_format`: rgb24 or yuv420p.")
        .def("push", &push, py::arg("frame"),
             "Queue one uint8 C-contiguous frame (copied; blocks while the queue is full).")
        .def("push_planes", &push_planes, py::arg("y"), py::arg("u"), py::arg("v"),
             "Queue one yuv420p frame given as three planes.")
        .def("close", &FrameStream::close, py::call_guard<py::gil_scoped_release>(),
             "Encode what is queued, flush, write the trailer, close the file.")
        .def("abort", &FrameStream::abort, py::call_guard<py::gil_scoped_release>(),
             "Drop queued frames and close the file without a trailer.")
        .def_property_readonly("frames_pushed", &FrameStream::frames_pushed)
        .def_property_readonly("frames_written", &FrameStream::frames_written, "frames handed to the encoder")
        .def_property_readonly("packets_written", &FrameStream::packets_written)
        .def_property_readonly("bytes_written", &FrameStream::bytes_written)
        .def_property_readonly("max_queued", &FrameStream::max_queued, "peak number of slots in use")
        .def_property_readonly("queue_size", &FrameStream::queue_size)
        .def_property_readonly("codec", &FrameStream::codec)
        .def_property_readonly("pix_fmt", &FrameStream::pix_fmt)
        .def_property_readonly("format", &FrameStream::format)
        .def_property_readonly("path", &FrameStream::path)
        .def_property_readonly("closed", &FrameStream::closed)
        .def_property_readonly("failed", &FrameStream::failed);

    m.def("available_codecs", &framestream::available_codecs, py::arg("probe_hardware") = true,
          py::arg("names") = std::vector<std::string>(),
          "Which of `names` (empty: every video encoder) this FFmpeg build has; hardware ones only if they "
          "open here.");
    m.def("libavcodec_version", &framestream::libavcodec_version);
    m.def("libavformat_version", &framestream::libavformat_version);
    m.def("set_log_level", &framestream::set_print_level, py::arg("level"),
          "Print FFmpeg messages at or below this av_log level (default AV_LOG_FATAL=8).");
}

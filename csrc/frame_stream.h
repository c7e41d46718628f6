// A bounded queue of frame slots and one encoder thread on FFmpeg's libraries: the narrow C++ API
// behind the `engine._framestream` Python module (bindings.cpp).
//
// The producer pushes uint8 frames (RGB24 (H, W, 3), or I420 YUV 4:2:0 as one buffer or three
// planes); `push` copies the frame into a free slot and blocks while every slot is taken
// (backpressure: memory is `queue_size` frames whatever the producer does).  The encoder thread
// converts each slot with swscale (BT.709, limited range for YUV codecs), encodes and muxes it.
// `close()` flushes the encoder and writes the trailer.  An error on the encoder thread is kept
// and thrown by the next `push` or `close` with FFmpeg's own message.
//
// Every choice of codec options, pixel format and container is made by the caller (the table in
// engine/codecs.py, checked by engine/sink_spec.py) and handed over as strings, so the PyAV sink
// can use the same settings; this side only asks FFmpeg whether the encoder takes them.
// Threading: one producer thread calls push*/close/abort.  They may block (a free slot, the
// worker's join) and never touch Python, so the bindings call them with the GIL released; the
// encoder thread never takes the GIL.  FFmpeg types stay in frame_stream.cpp (FrameStream::Impl).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace framestream {

// Raised by every call.  os_errno > 0: a file operation failed with that errno (full disk, no
// permission, ...), which the bindings raise as OSError(errno, message, path); otherwise an
// encoder error (engine._framestream.EncodeError).  Bad arguments throw std::invalid_argument.
struct StreamError : std::runtime_error {
    int os_errno;
    std::string path;
    StreamError(const std::string& msg, int os_errno_ = 0, std::string path_ = "")
        : std::runtime_error(msg), os_errno(os_errno_), path(std::move(path_)) {}
};

class FrameStream {
public:
    // Opens `path` and starts the encoder thread.  format: muxer name (mp4, matroska, mov; empty:
    // from the extension); pix_fmt: the encoder's pixel format (refused unless the encoder lists it);
    // input_format: rgb24 or yuv420p.  Frames are converted to pix_fmt with swscale when they differ.
    FrameStream(const std::string& path, int width, int height, int fps_num, int fps_den,
                const std::string& codec_name, const std::string& format_name, const std::string& pix_fmt_name,
                const std::string& input_format, const std::map<std::string, std::string>& codec_options,
                const std::map<std::string, std::string>& format_options, int gop, int queue_size);
    ~FrameStream();  // aborts an open stream
    FrameStream(const FrameStream&) = delete;
    FrameStream& operator=(const FrameStream&) = delete;

    // Throws (std::invalid_argument, or the encoder thread's StreamError) unless frames can be pushed.
    void check_open(const char* what);
    // One frame of frame_bytes() bytes in the input layout (RGB24 rows, or the I420 planes back to back).
    void push(const uint8_t* frame);
    // I420 only: y (H*W bytes), u and v (H/2*W/2 bytes each).
    void push_planes(const uint8_t* y, const uint8_t* u, const uint8_t* v);
    void close();  // encode what is queued, flush, write the trailer, close the file
    void abort();  // drop queued frames, close the file without a trailer (the caller deletes it)

    int width() const;
    int height() const;
    bool yuv_input() const;
    size_t frame_bytes() const;
    int64_t frames_pushed() const;
    int64_t frames_written() const;   // handed to the encoder
    int64_t packets_written() const;
    int64_t bytes_written() const;
    int max_queued() const;           // peak number of slots in use
    int queue_size() const;
    std::string codec() const;
    std::string pix_fmt() const;
    std::string format() const;
    std::string path() const;
    bool closed() const;
    bool failed() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Which of `names` (empty: every video encoder) this FFmpeg build has; hardware ones (nvenc) only if
// one opens here when asked to probe.  The codec table lives in Python (engine/codecs.py).
std::vector<std::string> available_codecs(bool probe_hardware, const std::vector<std::string>& names = {});
std::string libavcodec_version();
std::string libavformat_version();
// Print FFmpeg messages at or below this av_log level (default AV_LOG_FATAL = 8).
void set_print_level(int level);

}  // namespace framestream

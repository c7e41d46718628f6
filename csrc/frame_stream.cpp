// The frame stream's implementation (see frame_stream.h): FFmpeg encoder, slots, encoder thread.
// No Python here: the pybind11 bindings live in bindings.cpp.

#include "frame_stream.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/dict.h>
#include <libavutil/imgutils.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
}

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace framestream {

namespace {

// ---------------------------------------------------------------------------------------------
// Logging: FFmpeg's messages at error level are remembered (per thread) and put into exception
// text; nothing is printed below `g_print_level` (x264 prints its statistics at info level).

thread_local std::string t_last_error;
std::atomic<int> g_print_level{AV_LOG_FATAL};
std::once_flag g_setup_once;

void log_callback(void* avcl, int level, const char* fmt, va_list vl) {
    if (level > AV_LOG_ERROR && level > g_print_level.load()) return;
    char line[1024];
    int print_prefix = 1;
    av_log_format_line(avcl, level, fmt, vl, line, sizeof(line), &print_prefix);
    std::string text(line);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    if (level <= AV_LOG_ERROR && !text.empty()) t_last_error = text;
    if (level <= g_print_level.load()) std::fprintf(stderr, "%s\n", text.c_str());
}

void ensure_ffmpeg_setup() {
    std::call_once(g_setup_once, [] {
        av_log_set_level(AV_LOG_ERROR);
        av_log_set_callback(log_callback);
    });
}

std::string av_error_text(int err) {
    char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
    av_strerror(err, buf, sizeof(buf));
    return std::string(buf);
}

// ---------------------------------------------------------------------------------------------
// Errors (StreamError is declared in frame_stream.h).

bool is_file_errno(int e) {
    switch (e) {
        case ENOSPC: case EIO: case EFBIG: case EDQUOT: case EACCES: case EPERM: case EROFS:
        case ENOENT: case ENOTDIR: case EISDIR: case EEXIST: case ENAMETOOLONG: case EBADF:
            return true;
        default:
            return false;
    }
}

// `where` says which step failed; FFmpeg's last logged error (if any) is appended.
// OSError shows the path as its filename; other errors name it in the text.
StreamError make_error(const std::string& where, int err, bool file_op, const std::string& path) {
    int e = err < 0 ? -err : 0;  // AVERROR(e) == -e for errno codes
    bool os_error = file_op && is_file_errno(e);
    std::string msg = where + (os_error ? "" : " ('" + path + "')") + ": " + av_error_text(err);
    if (!t_last_error.empty()) {
        msg += " (FFmpeg: " + t_last_error + ")";
        t_last_error.clear();
    }
    return StreamError(msg, os_error ? e : 0, path);
}

// ---------------------------------------------------------------------------------------------

struct Dict {  // owns an AVDictionary
    AVDictionary* d = nullptr;
    ~Dict() { av_dict_free(&d); }
};

}  // namespace

struct FrameStream::Impl {
    Impl(const std::string& path, int width, int height, int fps_num, int fps_den,
                const std::string& codec_name, const std::string& format_name,
                const std::string& pix_fmt_name, const std::string& input_format,
                const std::map<std::string, std::string>& codec_options,
                const std::map<std::string, std::string>& format_options, int gop, int queue_size)
        : path_(path), width_(width), height_(height) {
        ensure_ffmpeg_setup();
        t_last_error.clear();
        // 1. Arguments.
        if (width <= 0 || height <= 0)
            throw std::invalid_argument("width and height must be positive, got " + std::to_string(width) +
                                        "x" + std::to_string(height));
        if (fps_num <= 0 || fps_den <= 0)
            throw std::invalid_argument("fps must be positive, got " + std::to_string(fps_num) + "/" +
                                        std::to_string(fps_den));
        if (queue_size < 1) throw std::invalid_argument("queue_size must be >= 1, got " + std::to_string(queue_size));
        if (gop < 0) throw std::invalid_argument("gop must be >= 0 (0: encoder default), got " + std::to_string(gop));
        if (input_format == "rgb24") {
            in_fmt_ = AV_PIX_FMT_RGB24;
        } else if (input_format == "yuv420p") {
            in_fmt_ = AV_PIX_FMT_YUV420P;
            if (width % 2 || height % 2)
                throw std::invalid_argument("yuv420p input needs an even width and height, got " +
                                            std::to_string(width) + "x" + std::to_string(height));
        } else {
            throw std::invalid_argument("input_format must be 'rgb24' or 'yuv420p', got '" + input_format + "'");
        }
        enc_fmt_ = av_get_pix_fmt(pix_fmt_name.c_str());
        if (enc_fmt_ == AV_PIX_FMT_NONE) throw std::invalid_argument("unknown pixel format '" + pix_fmt_name + "'");
        const AVPixFmtDescriptor* desc = av_pix_fmt_desc_get(enc_fmt_);
        if (((width % (1 << desc->log2_chroma_w)) != 0) || ((height % (1 << desc->log2_chroma_h)) != 0))
            throw std::invalid_argument(pix_fmt_name + " subsamples chroma, so width and height must be even, got " +
                                        std::to_string(width) + "x" + std::to_string(height));
        bool rgb_out = (desc->flags & AV_PIX_FMT_FLAG_RGB) != 0;
        frame_bytes_ = static_cast<size_t>(av_image_get_buffer_size(in_fmt_, width, height, 1));

        try {
            open_encoder(codec_name, format_name, rgb_out, codec_options, format_options, gop, fps_num, fps_den);
        } catch (...) {
            release_ffmpeg();
            throw;
        }
        // 2. Slots and the encoder thread.
        slots_.resize(static_cast<size_t>(queue_size));
        for (int i = 0; i < queue_size; ++i) {
            slots_[i].resize(frame_bytes_);
            free_.push_back(i);
        }
        worker_ = std::thread([this] { run(); });
    }

    ~Impl() { abort(); }  // with the GIL held is fine: the worker never takes it

    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;

    // One frame of frame_bytes_ bytes (shape and dtype checked by the caller); blocks for a slot.
    void push(const uint8_t* src) {
        check_open("push");
        enqueue([&](uint8_t* dst) { std::memcpy(dst, src, frame_bytes_); });
    }

    // YUV 4:2:0 as three planes: y (H, W), u and v (H/2, W/2), each C-contiguous.
    void push_planes(const uint8_t* py_, const uint8_t* pu, const uint8_t* pv) {
        check_open("push_planes");
        size_t ny = static_cast<size_t>(width_) * height_, nc = ny / 4;
        enqueue([&](uint8_t* dst) {
            std::memcpy(dst, py_, ny);
            std::memcpy(dst + ny, pu, nc);
            std::memcpy(dst + ny + nc, pv, nc);
        });
    }

    // Encode what is queued, flush the encoder, write the trailer and close the file.
    void close() {
        if (state_ == State::kClosed) {
            raise_if_failed();
            return;
        }
        if (state_ == State::kAborted) throw std::invalid_argument("close(): the stream was aborted");
        {
            std::lock_guard<std::mutex> lk(mu_);
            finishing_ = true;
        }
        cv_filled_.notify_all();
        if (worker_.joinable()) worker_.join();
        finish_file();
        state_ = State::kClosed;
        release_ffmpeg();
        raise_if_failed();
    }

    // Stop at once: queued frames are dropped and no trailer is written (the caller deletes the file).
    void abort() {
        if (state_ != State::kOpen) return;
        {
            std::lock_guard<std::mutex> lk(mu_);
            aborting_ = true;
        }
        cv_filled_.notify_all();
        cv_free_.notify_all();
        if (worker_.joinable()) worker_.join();
        if (oc_ && oc_->pb && !(oc_->oformat->flags & AVFMT_NOFILE)) avio_closep(&oc_->pb);
        state_ = State::kAborted;
        release_ffmpeg();
    }

    int64_t frames_pushed() const { return pushed_; }
    int64_t frames_written() const { return written_.load(); }
    int64_t packets_written() const { return packets_.load(); }
    int64_t bytes_written() const { return bytes_.load(); }
    int max_queued() const {
        std::lock_guard<std::mutex> lk(mu_);
        return max_queued_;
    }
    int queue_size() const { return static_cast<int>(slots_.size()); }
    std::string codec() const { return codec_name_; }
    std::string pix_fmt() const { return av_get_pix_fmt_name(enc_fmt_); }
    std::string format() const { return format_name_; }
    std::string path() const { return path_; }
    bool closed() const { return state_ != State::kOpen; }
    bool failed() const {
        std::lock_guard<std::mutex> lk(mu_);
        return failed_;
    }

    enum class State { kOpen, kClosed, kAborted };

    // ----- setup --------------------------------------------------------------------------

    void open_encoder(const std::string& codec_name, const std::string& format_name, bool rgb_out,
                      const std::map<std::string, std::string>& codec_options,
                      const std::map<std::string, std::string>& format_options, int gop, int fps_num,
                      int fps_den) {
        int err = avformat_alloc_output_context2(&oc_, nullptr, format_name.empty() ? nullptr : format_name.c_str(),
                                                 path_.c_str());
        if (err < 0 || !oc_)
            throw StreamError("no container for '" + path_ + "'" +
                              (format_name.empty() ? std::string(" (name it: mp4, matroska or mov)")
                                                   : " with format '" + format_name + "'") +
                              ": " + av_error_text(err));
        format_name_ = oc_->oformat->name;
        const AVCodec* codec = avcodec_find_encoder_by_name(codec_name.c_str());
        if (!codec)
            throw StreamError("encoder '" + codec_name + "' is not in this FFmpeg build (libavcodec " +
                              std::to_string(AV_VERSION_MAJOR(avcodec_version())) + "." +
                              std::to_string(AV_VERSION_MINOR(avcodec_version())) + ")");
        codec_name_ = codec->name;
        if (avformat_query_codec(oc_->oformat, codec->id, FF_COMPLIANCE_NORMAL) == 0)
            throw StreamError("container '" + format_name_ + "' cannot hold " + codec_name_ + " video");
        check_pix_fmt(codec);

        ctx_ = avcodec_alloc_context3(codec);
        if (!ctx_) throw StreamError("out of memory allocating the " + codec_name_ + " context");
        ctx_->width = width_;
        ctx_->height = height_;
        ctx_->pix_fmt = enc_fmt_;
        ctx_->time_base = AVRational{fps_den, fps_num};
        ctx_->framerate = AVRational{fps_num, fps_den};
        ctx_->sample_aspect_ratio = AVRational{1, 1};
        if (gop > 0) ctx_->gop_size = gop;
        ctx_->thread_count = 0;  // auto; an explicit "threads" option overrides it
        if (rgb_out) {
            ctx_->color_primaries = AVCOL_PRI_BT709;  // sRGB primaries
            ctx_->color_trc = AVCOL_TRC_IEC61966_2_1;
            ctx_->colorspace = AVCOL_SPC_RGB;
            ctx_->color_range = AVCOL_RANGE_JPEG;
        } else {
            ctx_->color_primaries = AVCOL_PRI_BT709;
            ctx_->color_trc = AVCOL_TRC_BT709;
            ctx_->colorspace = AVCOL_SPC_BT709;
            ctx_->color_range = AVCOL_RANGE_MPEG;
        }
        if (oc_->oformat->flags & AVFMT_GLOBALHEADER) ctx_->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;

        Dict opts;
        for (const auto& kv : codec_options) av_dict_set(&opts.d, kv.first.c_str(), kv.second.c_str(), 0);
        err = avcodec_open2(ctx_, codec, &opts.d);
        if (err < 0) throw make_error("opening encoder " + codec_name_, err, false, path_);
        if (AVDictionaryEntry* left = av_dict_get(opts.d, "", nullptr, AV_DICT_IGNORE_SUFFIX))
            throw StreamError("encoder " + codec_name_ + " does not know the option '" + left->key + "'");

        st_ = avformat_new_stream(oc_, nullptr);
        if (!st_) throw StreamError("out of memory adding a stream");
        st_->time_base = ctx_->time_base;
        st_->avg_frame_rate = ctx_->framerate;
        st_->r_frame_rate = ctx_->framerate;
        err = avcodec_parameters_from_context(st_->codecpar, ctx_);
        if (err < 0) throw make_error("copying codec parameters", err, false, path_);
        bool mp4_family = format_name_.find("mp4") != std::string::npos || format_name_.find("mov") != std::string::npos;
        if (mp4_family && codec->id == AV_CODEC_ID_HEVC) st_->codecpar->codec_tag = MKTAG('h', 'v', 'c', '1');

        if (!(oc_->oformat->flags & AVFMT_NOFILE)) {
            err = avio_open(&oc_->pb, path_.c_str(), AVIO_FLAG_WRITE);
            if (err < 0) throw make_error("opening the output for writing", err, true, path_);
        }
        Dict fopts;
        for (const auto& kv : format_options) av_dict_set(&fopts.d, kv.first.c_str(), kv.second.c_str(), 0);
        err = avformat_write_header(oc_, &fopts.d);
        if (err < 0) throw make_error("writing the " + format_name_ + " header", err, true, path_);

        if (in_fmt_ != enc_fmt_) {
            sws_ = sws_getContext(width_, height_, in_fmt_, width_, height_, enc_fmt_,
                                  SWS_BILINEAR | SWS_ACCURATE_RND, nullptr, nullptr, nullptr);
            if (!sws_)
                throw StreamError(std::string("swscale cannot convert ") + av_get_pix_fmt_name(in_fmt_) + " to " +
                                  av_get_pix_fmt_name(enc_fmt_));
            // BT.709 coefficients; RGB is full range, YUV is limited (TV) range, matching the tags above.
            const int* bt709 = sws_getCoefficients(SWS_CS_ITU709);
            int src_full = in_fmt_ == AV_PIX_FMT_RGB24 ? 1 : 0;
            int dst_full = rgb_out ? 1 : 0;
            sws_setColorspaceDetails(sws_, bt709, src_full, bt709, dst_full, 0, 1 << 16, 1 << 16);
        }
        frame_ = av_frame_alloc();
        pkt_ = av_packet_alloc();
        if (!frame_ || !pkt_) throw StreamError("out of memory allocating a frame");
        frame_->format = enc_fmt_;
        frame_->width = width_;
        frame_->height = height_;
        frame_->color_primaries = ctx_->color_primaries;
        frame_->color_trc = ctx_->color_trc;
        frame_->colorspace = ctx_->colorspace;
        frame_->color_range = ctx_->color_range;
        err = av_frame_get_buffer(frame_, 0);
        if (err < 0) throw make_error("allocating a frame", err, false, path_);
    }

    // The encoder itself says which pixel formats it takes (no table here: the caller chose one).
    void check_pix_fmt(const AVCodec* codec) const {
        if (!codec->pix_fmts) return;  // the encoder lists none: avcodec_open2 decides
        std::string accepted;
        for (const AVPixelFormat* f = codec->pix_fmts; *f != AV_PIX_FMT_NONE; ++f) {
            if (*f == enc_fmt_) return;
            accepted += (accepted.empty() ? "" : ", ") + std::string(av_get_pix_fmt_name(*f));
        }
        throw std::invalid_argument("encoder " + codec_name_ + " cannot take pixel format " +
                                    av_get_pix_fmt_name(enc_fmt_) + " (it takes: " + accepted + ")");
    }

    void release_ffmpeg() {
        if (sws_) sws_freeContext(sws_);
        sws_ = nullptr;
        av_frame_free(&frame_);
        av_packet_free(&pkt_);
        avcodec_free_context(&ctx_);
        if (oc_) {
            if (oc_->pb && !(oc_->oformat->flags & AVFMT_NOFILE)) avio_closep(&oc_->pb);
            avformat_free_context(oc_);
            oc_ = nullptr;
        }
        std::vector<std::vector<uint8_t>>().swap(slots_);
    }

    // ----- producer side ------------------------------------------------------------------

    void check_open(const char* what) {
        if (state_ == State::kClosed) throw std::invalid_argument(std::string(what) + "(): the stream is closed");
        if (state_ == State::kAborted) throw std::invalid_argument(std::string(what) + "(): the stream was aborted");
        raise_if_failed();
    }

    // Called without the GIL (the bindings release it): wait for a free slot, fill it, hand it to the encoder thread.
    template <typename Fill>
    void enqueue(Fill fill) {
        int slot;
        {
            std::unique_lock<std::mutex> lk(mu_);
            cv_free_.wait(lk, [this] { return !free_.empty() || failed_ || aborting_; });
            if (failed_) throw StreamError(error_msg_, error_errno_, path_);
            if (aborting_) throw std::invalid_argument("push(): the stream was aborted");
            slot = free_.front();
            free_.pop_front();
            int in_use = static_cast<int>(slots_.size() - free_.size());
            max_queued_ = std::max(max_queued_, in_use);
        }
        fill(slots_[slot].data());
        {
            std::lock_guard<std::mutex> lk(mu_);
            filled_.push_back(slot);
            ++pushed_;
        }
        cv_filled_.notify_one();
    }

    void raise_if_failed() {
        std::lock_guard<std::mutex> lk(mu_);
        if (failed_) throw StreamError(error_msg_, error_errno_, path_);
    }

    // ----- encoder thread -----------------------------------------------------------------

    void fail(const StreamError& e) {
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (!failed_) {
                failed_ = true;
                error_msg_ = e.what();
                error_errno_ = e.os_errno;
            }
        }
        cv_free_.notify_all();
    }

    void run() {
        bool ok = true;
        while (true) {
            int slot;
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_filled_.wait(lk, [this] { return !filled_.empty() || finishing_ || aborting_; });
                if (aborting_) return;
                if (filled_.empty()) break;  // finishing and drained
                slot = filled_.front();
                filled_.pop_front();
            }
            try {
                encode_slot(slots_[slot].data());
            } catch (const StreamError& e) {
                fail(e);
                ok = false;
            } catch (const std::exception& e) {
                fail(StreamError(std::string("encoder thread: ") + e.what()));
                ok = false;
            }
            {
                std::lock_guard<std::mutex> lk(mu_);
                free_.push_back(slot);
            }
            cv_free_.notify_one();
            if (!ok) return;  // pushers see failed_ and raise
        }
        try {
            send(nullptr);  // flush delayed frames
            int err = av_write_trailer(oc_);
            if (err < 0) throw make_error("writing the trailer", err, true, path_);
        } catch (const StreamError& e) {
            fail(e);
        }
    }

    void encode_slot(const uint8_t* src) {
        int err = av_frame_make_writable(frame_);
        if (err < 0) throw make_error("making the frame writable", err, false, path_);
        const uint8_t* planes[4] = {nullptr, nullptr, nullptr, nullptr};
        int strides[4] = {0, 0, 0, 0};
        if (in_fmt_ == AV_PIX_FMT_RGB24) {
            planes[0] = src;
            strides[0] = width_ * 3;
        } else {
            size_t ny = static_cast<size_t>(width_) * height_;
            planes[0] = src;
            planes[1] = src + ny;
            planes[2] = src + ny + ny / 4;
            strides[0] = width_;
            strides[1] = strides[2] = width_ / 2;
        }
        if (sws_) {
            sws_scale(sws_, planes, strides, 0, height_, frame_->data, frame_->linesize);
        } else {  // yuv420p in, yuv420p out
            for (int p = 0; p < 3; ++p) {
                int h = p == 0 ? height_ : height_ / 2;
                av_image_copy_plane(frame_->data[p], frame_->linesize[p], planes[p], strides[p], strides[p], h);
            }
        }
        frame_->pts = next_pts_++;
        send(frame_);
        written_.fetch_add(1);
    }

    void send(AVFrame* frame) {
        int err = avcodec_send_frame(ctx_, frame);
        if (err < 0) throw make_error("encoding with " + codec_name_, err, false, path_);
        while (true) {
            err = avcodec_receive_packet(ctx_, pkt_);
            if (err == AVERROR(EAGAIN) || err == AVERROR_EOF) return;
            if (err < 0) throw make_error("encoding with " + codec_name_, err, false, path_);
            av_packet_rescale_ts(pkt_, ctx_->time_base, st_->time_base);
            pkt_->stream_index = st_->index;
            bytes_.fetch_add(pkt_->size);
            err = av_interleaved_write_frame(oc_, pkt_);  // takes the packet's reference
            if (err < 0) throw make_error("writing a packet", err, true, path_);
            packets_.fetch_add(1);
        }
    }

    // After the worker: flush buffered bytes so a full disk is reported here, then close.
    void finish_file() {
        if (!oc_ || !oc_->pb || (oc_->oformat->flags & AVFMT_NOFILE)) return;
        avio_flush(oc_->pb);
        int err = oc_->pb->error;
        int cerr = avio_closep(&oc_->pb);
        if (err >= 0) err = cerr;
        if (err < 0) fail(make_error("closing the output", err, true, path_));
    }

    // ----- state --------------------------------------------------------------------------

    std::string path_, codec_name_, format_name_;
    int width_, height_;
    AVPixelFormat in_fmt_ = AV_PIX_FMT_RGB24, enc_fmt_ = AV_PIX_FMT_YUV420P;
    size_t frame_bytes_ = 0;

    AVFormatContext* oc_ = nullptr;
    AVCodecContext* ctx_ = nullptr;
    AVStream* st_ = nullptr;
    SwsContext* sws_ = nullptr;
    AVFrame* frame_ = nullptr;
    AVPacket* pkt_ = nullptr;
    int64_t next_pts_ = 0;

    std::vector<std::vector<uint8_t>> slots_;
    std::deque<int> free_, filled_;  // slot indices; guarded by mu_
    mutable std::mutex mu_;
    std::condition_variable cv_free_, cv_filled_;
    bool finishing_ = false, aborting_ = false, failed_ = false;  // guarded by mu_
    std::string error_msg_;
    int error_errno_ = 0;
    int max_queued_ = 0;
    int64_t pushed_ = 0;
    std::atomic<int64_t> written_{0}, packets_{0}, bytes_{0};
    std::thread worker_;
    State state_ = State::kOpen;  // touched only by the producer thread
};

namespace {

// Hardware encoders exist in the build even without the hardware: open a small one to be sure.
bool encoder_opens(const AVCodec* codec) {
    AVCodecContext* ctx = avcodec_alloc_context3(codec);
    if (!ctx) return false;
    ctx->width = 256;
    ctx->height = 256;
    ctx->pix_fmt = AV_PIX_FMT_YUV420P;
    ctx->time_base = AVRational{1, 25};
    ctx->framerate = AVRational{25, 1};
    int err = avcodec_open2(ctx, codec, nullptr);
    avcodec_free_context(&ctx);
    t_last_error.clear();
    return err >= 0;
}

// A hardware encoder (NVENC, VAAPI, ...) may exist in the build without a device to run on.
bool is_hardware(const AVCodec* codec) {
    return (codec->capabilities & AV_CODEC_CAP_HARDWARE) != 0 ||
           std::string(codec->name).find("nvenc") != std::string::npos;
}

// The encoders among `names` (the caller's table) that this build has; every video encoder of the
// build when `names` is empty.  Hardware ones count only if one opens, when asked to probe.
std::vector<std::string> list_codecs(bool probe_hardware, const std::vector<std::string>& names) {
    ensure_ffmpeg_setup();
    std::vector<const AVCodec*> candidates;
    if (names.empty()) {
        void* it = nullptr;
        while (const AVCodec* codec = av_codec_iterate(&it))
            if (av_codec_is_encoder(codec) && codec->type == AVMEDIA_TYPE_VIDEO) candidates.push_back(codec);
    } else {
        for (const std::string& name : names)
            if (const AVCodec* codec = avcodec_find_encoder_by_name(name.c_str())) candidates.push_back(codec);
    }
    std::vector<std::string> out;
    for (const AVCodec* codec : candidates) {
        if (probe_hardware && is_hardware(codec) && !encoder_opens(codec)) continue;
        out.emplace_back(codec->name);
    }
    return out;
}

std::string version_text(unsigned v) {
    return std::to_string(AV_VERSION_MAJOR(v)) + "." + std::to_string(AV_VERSION_MINOR(v)) + "." +
           std::to_string(AV_VERSION_MICRO(v));
}

}  // namespace


// ---- the public API: FrameStream forwards to its Impl ------------------------------------------

FrameStream::FrameStream(const std::string& path, int width, int height, int fps_num, int fps_den,
                         const std::string& codec_name, const std::string& format_name,
                         const std::string& pix_fmt_name, const std::string& input_format,
                         const std::map<std::string, std::string>& codec_options,
                         const std::map<std::string, std::string>& format_options, int gop, int queue_size)
    : impl_(new Impl(path, width, height, fps_num, fps_den, codec_name, format_name, pix_fmt_name, input_format,
                     codec_options, format_options, gop, queue_size)) {}
FrameStream::~FrameStream() = default;

void FrameStream::check_open(const char* what) { impl_->check_open(what); }
void FrameStream::push(const uint8_t* frame) { impl_->push(frame); }
void FrameStream::push_planes(const uint8_t* y, const uint8_t* u, const uint8_t* v) { impl_->push_planes(y, u, v); }
void FrameStream::close() { impl_->close(); }
void FrameStream::abort() { impl_->abort(); }

int FrameStream::width() const { return impl_->width_; }
int FrameStream::height() const { return impl_->height_; }
bool FrameStream::yuv_input() const { return impl_->in_fmt_ == AV_PIX_FMT_YUV420P; }
size_t FrameStream::frame_bytes() const { return impl_->frame_bytes_; }
int64_t FrameStream::frames_pushed() const { return impl_->frames_pushed(); }
int64_t FrameStream::frames_written() const { return impl_->frames_written(); }
int64_t FrameStream::packets_written() const { return impl_->packets_written(); }
int64_t FrameStream::bytes_written() const { return impl_->bytes_written(); }
int FrameStream::max_queued() const { return impl_->max_queued(); }
int FrameStream::queue_size() const { return impl_->queue_size(); }
std::string FrameStream::codec() const { return impl_->codec(); }
std::string FrameStream::pix_fmt() const { return impl_->pix_fmt(); }
std::string FrameStream::format() const { return impl_->format(); }
std::string FrameStream::path() const { return impl_->path(); }
bool FrameStream::closed() const { return impl_->closed(); }
bool FrameStream::failed() const { return impl_->failed(); }

std::vector<std::string> available_codecs(bool probe_hardware, const std::vector<std::string>& names) {
    return list_codecs(probe_hardware, names);
}
std::string libavcodec_version() { return version_text(avcodec_version()); }
std::string libavformat_version() { return version_text(avformat_version()); }
void set_print_level(int level) { g_print_level.store(level); }

}  // namespace framestream

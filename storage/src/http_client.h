// A small HTTP/1.1 client on a plain TCP socket, for etcd's JSON gateway (etcd_metadata_store.cc):
// POST requests on one keep-alive connection, every call bounded by a deadline with poll(),
// Content-Length and chunked bodies, and a chunked body read as a stream (a watch). No TLS, no
// proxies, no redirects, no pipelining.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "weft/fabric/result.h"
#include "weft/fabric/shared_memory.h"

namespace weft::storage {

struct HttpEndpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string name;  // "host:port", for messages
};

// "http://host:port" or "host:port", a trailing '/' allowed; an IPv6 host in brackets.
// kUnsupported for "https://" (no TLS here), kInvalidArgument for anything else.
Result<HttpEndpoint> parse_http_endpoint(std::string_view endpoint);

struct HttpResponse {
  int status = 0;
  std::string body;  // decoded (chunks joined); empty for a stream, read with read_stream()
};

// Decodes a chunked body as its bytes arrive; trailers are read and dropped.
class ChunkedDecoder {
 public:
  // Moves the body bytes that `in` holds to `out` and erases from `in` what it consumed (a
  // partial size line stays for the next call). kCorrupt on a malformed chunk.
  Result<void> feed(std::string& in, std::string& out);
  bool done() const noexcept { return state_ == State::kDone; }

 private:
  enum class State : std::uint8_t { kSize, kData, kDataEnd, kTrailer, kDone };
  State state_ = State::kSize;
  std::size_t remaining_ = 0;  // bytes of the current chunk still to come
};

// One connection to one server, made on the first request and made again after any failure.
// Errors are kUnavailable (cannot connect, reset, no answer by the deadline: retry the call) or
// kCorrupt (not HTTP), their message starting with `label`. One thread at a time.
class HttpConnection {
 public:
  using Clock = std::chrono::steady_clock;

  HttpConnection(HttpEndpoint endpoint, std::string label, bool keep_probing = false)
      : endpoint_(std::move(endpoint)), label_(std::move(label)), keep_probing_(keep_probing) {}

  // POSTs `body` (JSON) to `path` and reads the whole response within `timeout_ms`. A request
  // on a kept-alive connection the server closed meanwhile is sent again, once, on a new one:
  // only when nothing at all came back, so the server never saw it.
  Result<HttpResponse> post(std::string_view path, std::string_view body, int timeout_ms);

  // POSTs on a new connection and reads the response's head within `timeout_ms`. A 2xx response's
  // body is then read with read_stream(); any other comes back whole, in `body`.
  Result<HttpResponse> post_stream(std::string_view path, std::string_view body, int timeout_ms);

  // Appends what has arrived of a streamed body to `out`, waiting up to `timeout_ms` (0: not at
  // all) for the first bytes; false once the body has ended (the connection is then closed).
  Result<bool> read_stream(std::string& out, int timeout_ms);

  int fd() const noexcept { return socket_.get(); }
  const std::string& label() const noexcept { return label_; }
  void close() noexcept;

 private:
  struct Head {
    int status = 0;
    bool chunked = false;
    bool has_length = false;
    std::size_t length = 0;
    bool close = false;  // the server closes after this response (or the body runs to EOF)
  };

  Result<void> connect(Clock::time_point deadline, int timeout_ms);
  Result<void> send_all(std::string_view bytes, Clock::time_point deadline, int timeout_ms);
  // Reads more bytes into buffer_; 0 at EOF. kUnavailable past the deadline.
  Result<std::size_t> receive(Clock::time_point deadline, int timeout_ms);
  Result<Head> read_head(Clock::time_point deadline, int timeout_ms);
  Result<HttpResponse> read_response(Clock::time_point deadline, int timeout_ms);
  Result<HttpResponse> read_body(Head head, Clock::time_point deadline, int timeout_ms);
  std::string request(std::string_view path, std::string_view body) const;
  bool server_closed() const;  // a kept-alive connection that is readable now was closed (or misbehaves)
  Error unavailable(std::string what) const { return Error{Errc::kUnavailable, label_ + ": " + std::move(what)}; }

  HttpEndpoint endpoint_;
  std::string label_;
  bool keep_probing_;          // TCP keep-alive probes, so a silent peer ends a long stream
  UniqueFd socket_;
  std::string buffer_;         // bytes read and not consumed yet
  std::size_t received_ = 0;   // bytes read since the current request was sent
  // A stream in progress (post_stream): how its body ends.
  ChunkedDecoder stream_chunks_;
  bool stream_chunked_ = false;
};

}  // namespace weft::storage

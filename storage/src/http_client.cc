#include "http_client.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <memory>
#include <utility>

namespace weft::storage {
namespace {

using Clock = HttpConnection::Clock;

constexpr std::size_t kMaxHeadBytes = 64 * 1024;
constexpr std::size_t kMaxBodyBytes = std::size_t{256} << 20;
constexpr std::size_t kMaxChunkLineBytes = 4096;
constexpr std::size_t kReadBytes = 64 * 1024;

Error corrupt(const std::string& label, std::string what) { return Error{Errc::kCorrupt, label + ": " + std::move(what)}; }

bool equals_ignoring_case(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    return lower(x) == lower(y);
  });
}

bool contains_ignoring_case(std::string_view text, std::string_view word) {
  for (std::size_t i = 0; i + word.size() <= text.size(); ++i)
    if (equals_ignoring_case(text.substr(i, word.size()), word)) return true;
  return false;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// Milliseconds to `deadline`, rounded up so a poll never wakes just before it; 0 once past.
int poll_ms(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<std::int64_t>(left, 0, 60 * 60 * 1000));
}

// Waits for `events` on `fd` until `deadline`: false when it passed first. An error or a hang-up
// counts as ready: the next call on the socket reports it.
Result<bool> wait_for(int fd, short events, Clock::time_point deadline, const std::string& label) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, poll_ms(deadline));
    if (n > 0) return true;
    if (n == 0) {
      if (Clock::now() >= deadline) return false;
      continue;
    }
    if (errno != EINTR) return os_error(Errc::kUnavailable, label + ": poll", errno);
  }
}

Error timed_out(const std::string& label, int timeout_ms) {
  return Error{Errc::kUnavailable, label + ": no answer within " + std::to_string(timeout_ms) + " ms"};
}

}  // namespace

Result<HttpEndpoint> parse_http_endpoint(std::string_view endpoint) {
  const auto invalid = [&](std::string_view why) {
    return Error{Errc::kInvalidArgument, "endpoint '" + std::string(endpoint) + "': " + std::string(why)};
  };
  std::string_view rest = endpoint;
  if (rest.starts_with("https://"))
    return Error{Errc::kUnsupported, "endpoint '" + std::string(endpoint) + "': https is not supported (plain http only)"};
  if (rest.starts_with("http://")) rest.remove_prefix(7);
  if (rest.ends_with('/')) rest.remove_suffix(1);
  if (rest.find('/') != std::string_view::npos) return invalid("a path is not allowed, only host:port");
  HttpEndpoint out;
  std::string_view port;
  if (rest.starts_with('[')) {
    const std::size_t close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':')
      return invalid("expected [ipv6-address]:port");
    out.host = std::string(rest.substr(1, close - 1));
    port = rest.substr(close + 2);
  } else {
    const std::size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) return invalid("no port (expected host:port)");
    out.host = std::string(rest.substr(0, colon));
    port = rest.substr(colon + 1);
  }
  if (out.host.empty()) return invalid("no host");
  unsigned value = 0;
  const auto [end, parse_error] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (parse_error != std::errc{} || end != port.data() + port.size() || value == 0 || value > 65535)
    return invalid("the port must be a number from 1 to 65535");
  out.port = static_cast<std::uint16_t>(value);
  out.name = std::string(rest);
  return out;
}

Result<void> ChunkedDecoder::feed(std::string& in, std::string& out) {
  std::size_t pos = 0;
  bool need_more = false;
  while (!need_more && state_ != State::kDone) {
    switch (state_) {
      case State::kSize: {
        const std::size_t eol = in.find("\r\n", pos);
        if (eol == std::string::npos) {
          if (in.size() - pos > kMaxChunkLineBytes) return Error{Errc::kCorrupt, "a chunk size line too long"};
          need_more = true;
          break;
        }
        std::string_view line = std::string_view(in).substr(pos, eol - pos);
        line = trim(line.substr(0, line.find(';')));  // chunk extensions are ignored
        std::uint64_t size = 0;
        const auto [end, parse_error] = std::from_chars(line.data(), line.data() + line.size(), size, 16);
        if (line.empty() || parse_error != std::errc{} || end != line.data() + line.size() || size > kMaxBodyBytes)
          return Error{Errc::kCorrupt, "a malformed chunk size '" + std::string(line.substr(0, 32)) + "'"};
        pos = eol + 2;
        remaining_ = static_cast<std::size_t>(size);
        state_ = size == 0 ? State::kTrailer : State::kData;
        break;
      }
      case State::kData: {
        const std::size_t take = std::min(remaining_, in.size() - pos);
        out.append(in, pos, take);
        pos += take;
        remaining_ -= take;
        if (remaining_ == 0)
          state_ = State::kDataEnd;
        else
          need_more = true;
        break;
      }
      case State::kDataEnd:
        if (in.size() - pos < 2) {
          need_more = true;
          break;
        }
        if (in.compare(pos, 2, "\r\n") != 0) return Error{Errc::kCorrupt, "a chunk not followed by CRLF"};
        pos += 2;
        state_ = State::kSize;
        break;
      case State::kTrailer: {
        const std::size_t eol = in.find("\r\n", pos);
        if (eol == std::string::npos) {
          if (in.size() - pos > kMaxHeadBytes) return Error{Errc::kCorrupt, "a trailer too long"};
          need_more = true;
          break;
        }
        if (eol == pos) state_ = State::kDone;  // the empty line after the trailers (if any)
        pos = eol + 2;
        break;
      }
      case State::kDone:
      default:
        need_more = true;
        break;
    }
  }
  in.erase(0, pos);
  return ok();
}

void HttpConnection::close() noexcept {
  socket_ = UniqueFd();
  buffer_.clear();
  stream_chunks_ = ChunkedDecoder();
  stream_chunked_ = false;
}

Result<void> HttpConnection::connect(Clock::time_point deadline, int timeout_ms) {
  close();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(endpoint_.port);
  if (const int rc = ::getaddrinfo(endpoint_.host.c_str(), port.c_str(), &hints, &found); rc != 0)
    return unavailable("resolving " + endpoint_.host + ": " + ::gai_strerror(rc));
  const std::unique_ptr<addrinfo, void (*)(addrinfo*)> addresses(found, ::freeaddrinfo);
  Error last = unavailable("no address for " + endpoint_.host);
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
    if (!fd.valid()) {
      last = os_error(Errc::kUnavailable, label_ + ": socket", errno);
      continue;
    }
    if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last = os_error(Errc::kUnavailable, label_ + ": connect", errno);
        continue;
      }
      WEFT_TRY(const bool writable, wait_for(fd.get(), POLLOUT, deadline, label_));
      if (!writable) return unavailable("no connection within " + std::to_string(timeout_ms) + " ms");
      int error = 0;
      socklen_t size = sizeof(error);
      if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &size) != 0) error = errno;
      if (error != 0) {
        last = os_error(Errc::kUnavailable, label_ + ": connect", error);
        continue;
      }
    }
    // Requests are written whole and are small: no reason to hold them back.
    const int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (keep_probing_) {
      // A stream that is quiet by design (a watch) learns of a peer that vanished without a FIN
      // (host down, cable cut) in about 25 s: 10 s idle, then 3 probes 5 s apart.
      const int idle_s = 10, interval_s = 5, probes = 3;
      ::setsockopt(fd.get(), SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
    }
    socket_ = std::move(fd);
    return ok();
  }
  return last;
}

Result<void> HttpConnection::send_all(std::string_view bytes, Clock::time_point deadline, int timeout_ms) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(socket_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n >= 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return os_error(Errc::kUnavailable, label_ + ": send", errno);
    WEFT_TRY(const bool writable, wait_for(socket_.get(), POLLOUT, deadline, label_));
    if (!writable) return timed_out(label_, timeout_ms);
  }
  return ok();
}

Result<std::size_t> HttpConnection::receive(Clock::time_point deadline, int timeout_ms) {
  char bytes[kReadBytes];
  for (;;) {
    const ssize_t n = ::recv(socket_.get(), bytes, sizeof(bytes), 0);
    if (n >= 0) {
      buffer_.append(bytes, static_cast<std::size_t>(n));
      received_ += static_cast<std::size_t>(n);
      return static_cast<std::size_t>(n);
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return os_error(Errc::kUnavailable, label_ + ": receive", errno);
    WEFT_TRY(const bool readable, wait_for(socket_.get(), POLLIN, deadline, label_));
    if (!readable) return timed_out(label_, timeout_ms);
  }
}

Result<HttpConnection::Head> HttpConnection::read_head(Clock::time_point deadline, int timeout_ms) {
  std::size_t end = 0;
  while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
    if (buffer_.size() > kMaxHeadBytes) return corrupt(label_, "a response head over 64 KiB");
    WEFT_TRY(const std::size_t n, receive(deadline, timeout_ms));
    if (n == 0) return unavailable(received_ == 0 ? "the connection closed before an answer" : "the connection closed mid-answer");
  }
  const std::string_view text = std::string_view(buffer_).substr(0, end + 2);
  Head head;
  std::size_t eol = text.find("\r\n");
  const std::string_view status_line = text.substr(0, eol);
  // "HTTP/1.1 200 OK"
  if (!status_line.starts_with("HTTP/1.") || status_line.size() < 12 || status_line[8] != ' ')
    return corrupt(label_, "not an HTTP/1.x answer: '" + std::string(status_line.substr(0, 64)) + "'");
  const std::string_view code = status_line.substr(9, 3);
  const auto [code_end, code_error] = std::from_chars(code.data(), code.data() + code.size(), head.status);
  if (code_error != std::errc{} || code_end != code.data() + code.size() || head.status < 100)
    return corrupt(label_, "a malformed status line: '" + std::string(status_line.substr(0, 64)) + "'");
  head.close = status_line[7] == '0';  // HTTP/1.0: no keep-alive unless asked, and we do not ask
  for (std::size_t pos = eol + 2; pos < text.size(); pos = eol + 2) {
    eol = text.find("\r\n", pos);
    const std::string_view line = text.substr(pos, eol - pos);
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    const std::string_view name = line.substr(0, colon);
    const std::string_view value = trim(line.substr(colon + 1));
    if (equals_ignoring_case(name, "content-length")) {
      const auto [value_end, value_error] = std::from_chars(value.data(), value.data() + value.size(), head.length);
      if (value_error != std::errc{} || value_end != value.data() + value.size())
        return corrupt(label_, "a malformed Content-Length '" + std::string(value.substr(0, 32)) + "'");
      head.has_length = true;
    } else if (equals_ignoring_case(name, "transfer-encoding")) {
      head.chunked = contains_ignoring_case(value, "chunked");
    } else if (equals_ignoring_case(name, "connection")) {
      head.close = contains_ignoring_case(value, "close");
    }
  }
  buffer_.erase(0, end + 4);
  if (head.has_length && head.length > kMaxBodyBytes) return corrupt(label_, "an answer over 256 MiB");
  return head;
}

Result<HttpResponse> HttpConnection::read_response(Clock::time_point deadline, int timeout_ms) {
  WEFT_TRY(Head head, read_head(deadline, timeout_ms));
  while (head.status < 200) {  // 1xx (100 Continue): the real answer follows
    WEFT_TRY(head, read_head(deadline, timeout_ms));
  }
  return read_body(head, deadline, timeout_ms);
}

Result<HttpResponse> HttpConnection::read_body(Head head, Clock::time_point deadline, int timeout_ms) {
  HttpResponse response;
  response.status = head.status;
  if (head.status == 204 || head.status == 304) {
    // no body
  } else if (head.chunked) {
    ChunkedDecoder chunks;
    for (;;) {
      if (Result<void> fed = chunks.feed(buffer_, response.body); !fed.ok()) return corrupt(label_, fed.error().message);
      if (chunks.done()) break;
      if (response.body.size() > kMaxBodyBytes) return corrupt(label_, "an answer over 256 MiB");
      WEFT_TRY(const std::size_t n, receive(deadline, timeout_ms));
      if (n == 0) return unavailable("the connection closed mid-answer");
    }
  } else if (head.has_length) {
    while (buffer_.size() < head.length) {
      WEFT_TRY(const std::size_t n, receive(deadline, timeout_ms));
      if (n == 0) return unavailable("the connection closed mid-answer");
    }
    response.body = buffer_.substr(0, head.length);
    buffer_.erase(0, head.length);
  } else {
    // Neither length nor chunks: the body runs to the end of the connection.
    for (;;) {
      if (buffer_.size() > kMaxBodyBytes) return corrupt(label_, "an answer over 256 MiB");
      WEFT_TRY(const std::size_t n, receive(deadline, timeout_ms));
      if (n == 0) break;
    }
    response.body = std::move(buffer_);
    head.close = true;
  }
  if (head.close) close();
  return response;
}

std::string HttpConnection::request(std::string_view path, std::string_view body) const {
  std::string out;
  out.reserve(160 + path.size() + body.size());
  out.append("POST ").append(path).append(" HTTP/1.1\r\nHost: ").append(endpoint_.name);
  out.append("\r\nContent-Type: application/json\r\nContent-Length: ").append(std::to_string(body.size()));
  out.append("\r\n\r\n").append(body);
  return out;
}

bool HttpConnection::server_closed() const {
  pollfd p{socket_.get(), POLLIN, 0};
  return ::poll(&p, 1, 0) != 0;  // EOF, an error, or bytes nobody asked for: unusable either way
}

Result<HttpResponse> HttpConnection::post(std::string_view path, std::string_view body, int timeout_ms) {
  const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  if (socket_.valid() && server_closed()) close();
  const std::string bytes = request(path, body);
  for (bool reused = socket_.valid();; reused = false) {
    Result<HttpResponse> response = [&]() -> Result<HttpResponse> {
      if (!socket_.valid()) WEFT_TRY_VOID(connect(deadline, timeout_ms));
      received_ = 0;
      WEFT_TRY_VOID(send_all(bytes, deadline, timeout_ms));
      return read_response(deadline, timeout_ms);
    }();
    if (response.ok()) return response;
    close();
    // The server may close an idle connection just as a request goes out on it: nothing comes
    // back and it saw nothing, so the request goes once more on a new connection.
    if (!reused || received_ != 0 || Clock::now() >= deadline) return response;
  }
}

Result<HttpResponse> HttpConnection::post_stream(std::string_view path, std::string_view body, int timeout_ms) {
  const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  Result<HttpResponse> response = [&]() -> Result<HttpResponse> {
    WEFT_TRY_VOID(connect(deadline, timeout_ms));
    received_ = 0;
    WEFT_TRY_VOID(send_all(request(path, body), deadline, timeout_ms));
    WEFT_TRY(Head head, read_head(deadline, timeout_ms));
    while (head.status < 200) {
      WEFT_TRY(head, read_head(deadline, timeout_ms));
    }
    if (head.status >= 300) return read_body(head, deadline, timeout_ms);  // an error comes whole
    stream_chunks_ = ChunkedDecoder();
    stream_chunked_ = head.chunked;
    HttpResponse started;
    started.status = head.status;
    return started;
  }();
  if (!response.ok() || response->status >= 300) close();
  return response;
}

Result<bool> HttpConnection::read_stream(std::string& out, int timeout_ms) {
  if (!socket_.valid()) return false;
  const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0));
  for (;;) {
    // Everything that has arrived, without waiting.
    bool ended = false;
    for (;;) {
      if (buffer_.size() > kMaxBodyBytes) {
        close();
        return corrupt(label_, "over 256 MiB of a stream unread");
      }
      char bytes[kReadBytes];
      const ssize_t n = ::recv(socket_.get(), bytes, sizeof(bytes), 0);
      if (n > 0) {
        buffer_.append(bytes, static_cast<std::size_t>(n));
        continue;
      }
      if (n == 0) {
        ended = true;
        break;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      const int error = errno;
      close();
      return os_error(Errc::kUnavailable, label_ + ": receive", error);
    }
    const std::size_t before = out.size();
    if (stream_chunked_) {
      if (Result<void> fed = stream_chunks_.feed(buffer_, out); !fed.ok()) {
        close();
        return corrupt(label_, fed.error().message);
      }
      if (stream_chunks_.done()) {
        close();
        return false;
      }
      if (ended) {
        close();
        return unavailable("the connection closed mid-stream");
      }
    } else {
      out += buffer_;
      buffer_.clear();
      if (ended) {
        close();
        return false;
      }
    }
    if (out.size() > before) return true;
    WEFT_TRY(const bool readable, wait_for(socket_.get(), POLLIN, deadline, label_));
    if (!readable) return true;
  }
}

}  // namespace weft::storage

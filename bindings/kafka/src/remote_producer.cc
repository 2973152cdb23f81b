#include "weft/kafka/remote_producer.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <mutex>
#include <utility>

#include "weft/fabric/record_batch.h"
#include "weft/fabric/ring.h"
#include "weft/kafka/wire.h"

namespace weft::kafka {

namespace {

int remaining_ms(std::int64_t deadline_ns) {
  const std::int64_t left = (deadline_ns - monotonic_ns()) / 1'000'000;
  return left <= 0 ? 0 : static_cast<int>(std::min<std::int64_t>(left, INT32_MAX));
}

}  // namespace

Result<WireConnection> WireConnection::open(std::string_view address, int timeout_ms) {
  const std::size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == address.size())
    return Error{Errc::kInvalidArgument, "'" + std::string(address) + "' is not HOST:PORT"};
  const std::string host(address.substr(0, colon));
  const std::string port(address.substr(colon + 1));
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0 || found == nullptr)
    return Error{Errc::kUnavailable, "cannot resolve " + std::string(address) + ": " + gai_strerror(rc)};
  const int fd = ::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    ::freeaddrinfo(found);
    return os_error(Errc::kIo, "socket", errno);
  }
  WireConnection connection(fd);
  const int rc = ::connect(fd, found->ai_addr, found->ai_addrlen);
  const int connect_errno = errno;
  ::freeaddrinfo(found);
  if (rc != 0 && connect_errno != EINPROGRESS) return os_error(Errc::kUnavailable, "connecting to " + std::string(address), connect_errno);
  if (rc != 0) {
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return Error{Errc::kUnavailable, "connecting to " + std::string(address) + " timed out"};
    int error = 0;
    socklen_t length = sizeof error;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
    if (error != 0) return os_error(Errc::kUnavailable, "connecting to " + std::string(address), error);
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return connection;
}

WireConnection::WireConnection(WireConnection&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

WireConnection& WireConnection::operator=(WireConnection&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

WireConnection::~WireConnection() {
  if (fd_ >= 0) ::close(fd_);
}

Result<void> WireConnection::send_all(std::string_view bytes) {
  for (std::size_t sent = 0; sent < bytes.size();) {
    const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd_, POLLOUT, 0};
      if (::poll(&p, 1, 30'000) <= 0) return Error{Errc::kUnavailable, "the peer took nothing for 30 s"};
      continue;
    }
    return os_error(Errc::kUnavailable, "sending", errno);
  }
  return ok();
}

Result<std::string> WireConnection::read_frame(int timeout_ms, std::size_t max_bytes) {
  const std::int64_t deadline = monotonic_ns() + std::int64_t{timeout_ms} * 1'000'000;
  auto read_exactly = [&](char* out, std::size_t n) -> Result<void> {
    for (std::size_t got = 0; got < n;) {
      const ssize_t r = ::recv(fd_, out + got, n - got, 0);
      if (r > 0) {
        got += static_cast<std::size_t>(r);
        continue;
      }
      if (r == 0) return Error{Errc::kUnavailable, "the peer closed the connection"};
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return os_error(Errc::kUnavailable, "receiving", errno);
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, remaining_ms(deadline)) <= 0) return Error{Errc::kUnavailable, "no answer within " + std::to_string(timeout_ms) + " ms"};
    }
    return ok();
  };
  char size_bytes[4];
  WEFT_TRY_VOID(read_exactly(size_bytes, 4));
  const auto size = static_cast<std::uint32_t>(wire::load_be32(reinterpret_cast<const std::byte*>(size_bytes)));
  if (size > max_bytes) return Error{Errc::kCorrupt, "a response frame of " + std::to_string(size) + " bytes"};
  std::string frame(size, '\0');
  WEFT_TRY_VOID(read_exactly(frame.data(), size));
  return frame;
}

std::string request_frame(std::int16_t api_key, std::int16_t api_version, std::int32_t correlation_id, std::string_view client_id,
                          std::string_view body) {
  Writer w;
  w.i32(0);
  w.i16(api_key);
  w.i16(api_version);
  w.i32(correlation_id);
  w.string(client_id, false);
  w.raw(body);
  w.patch_i32(0, static_cast<std::int32_t>(w.size() - 4));
  return w.take();
}

namespace {

// Produce v7 (the newest version every Kafka-protocol broker of this era takes unflexed) to one
// partition's leader; a connection per leader, kept.
class KafkaRemoteProducer final : public RemoteProducer {
 public:
  KafkaRemoteProducer(std::string client_id, int connect_timeout_ms) : client_id_(std::move(client_id)), connect_timeout_ms_(connect_timeout_ms) {}

  Result<Offset> produce(const std::string& leader_address, std::string_view topic, std::uint32_t partition, std::span<const std::byte> batch,
                         Acks acks, std::int64_t timeout_ms) override {
    std::lock_guard lock(mutex_);
    const int timeout = static_cast<int>(std::clamp<std::int64_t>(timeout_ms, 1, INT32_MAX));
    auto connection = connections_.find(leader_address);
    if (connection == connections_.end()) {
      Result<WireConnection> opened = WireConnection::open(leader_address, connect_timeout_ms_);
      // Nothing was sent: the caller may ask for the route again and resend safely.
      if (!opened.ok()) return Error{Errc::kAborted, opened.error().message};
      connection = connections_.emplace(leader_address, std::move(*opened)).first;
    }
    Writer body;
    body.nullable_string(std::nullopt, false);  // transactional id
    body.i16(acks == Acks::kAll ? std::int16_t{-1} : std::int16_t{1});
    body.i32(timeout);
    body.array(1, false);
    body.string(topic, false);
    body.array(1, false);
    body.i32(static_cast<std::int32_t>(partition));
    body.bytes(batch, false);
    correlation_ = (correlation_ + 1) & 0x7fffffff;
    const std::int32_t correlation = correlation_;
    Result<std::string> answer = exchange(connection->second, request_frame(0, 7, correlation, client_id_, body.buffer()), timeout);
    if (!answer.ok()) {
      connections_.erase(connection);  // a half-read answer leaves the stream unusable
      return answer.error();
    }
    // Response v7: correlation id, [topic [partition, error, base offset, append time, log start]], throttle.
    Reader r(std::as_bytes(std::span(answer->data(), answer->size())));
    const std::int32_t answered = r.i32();
    const std::int32_t topics = r.array(false);
    (void)r.string(false);
    const std::int32_t partitions = r.array(false);
    (void)r.i32();
    const std::int16_t code = r.i16();
    const std::int64_t base = r.i64();
    if (!r.ok() || answered != correlation || topics != 1 || partitions != 1) {
      connections_.erase(connection);
      return Error{Errc::kCorrupt, "the leader's Produce answer makes no sense" + (r.ok() ? std::string() : ": " + r.error())};
    }
    switch (code) {
      case error::kNone: return Offset{base};
      case error::kNotLeaderOrFollower:
      case error::kLeaderNotAvailable:
      case error::kUnknownTopicOrPartition:
        // Refused before anything was appended: leadership moved (or the topic is not there yet).
        return Error{Errc::kAborted, "the node answered Kafka error " + std::to_string(code) + " (not the leader now)"};
      case error::kMessageTooLarge:
      case error::kRecordListTooLarge: return Error{Errc::kInvalidArgument, "the leader refused the batch as too large"};
      case error::kCorruptMessage:
      case error::kInvalidRecord: return Error{Errc::kInvalidArgument, "the leader refused the batch as malformed"};
      case error::kRequestTimedOut:
        return Error{Errc::kUnavailable, "not acknowledged by the in-sync replicas in time; the records may or may not be in the log"};
      default: return Error{Errc::kUnavailable, "the leader answered Kafka error " + std::to_string(code)};
    }
  }

 private:
  static Result<std::string> exchange(WireConnection& connection, const std::string& request, int timeout_ms) {
    WEFT_TRY_VOID(connection.send_all(request));
    return connection.read_frame(timeout_ms + 5'000);  // the broker answers at its own timeout
  }

  std::mutex mutex_;
  std::string client_id_;
  int connect_timeout_ms_;
  std::int32_t correlation_ = 0;
  std::map<std::string, WireConnection, std::less<>> connections_;
};

}  // namespace

std::shared_ptr<RemoteProducer> make_remote_producer(std::string client_id, int connect_timeout_ms) {
  return std::make_shared<KafkaRemoteProducer>(std::move(client_id), connect_timeout_ms);
}

}  // namespace weft::kafka

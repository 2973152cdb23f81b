#include "weft/fabric/local_protocol.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace weft::local {

void Writer::put(const void* p, std::size_t n) {
  const auto* b = static_cast<const std::byte*>(p);
  out_.insert(out_.end(), b, b + n);
}

void Writer::str(std::string_view s) {
  u32(static_cast<std::uint32_t>(s.size()));
  put(s.data(), s.size());
}

std::string Reader::str(std::size_t max_bytes) {
  const std::uint32_t n = u32();
  if (failed_ || n > max_bytes || in_.size() - at_ < n) {
    failed_ = true;
    return {};
  }
  std::string s(reinterpret_cast<const char*>(in_.data() + at_), n);
  at_ += n;
  return s;
}

Result<void> Reader::finish(std::string_view what) const {
  if (failed_) return Error{Errc::kInvalidArgument, std::string(what) + ": message truncated or a field too long"};
  if (!at_end()) return Error{Errc::kInvalidArgument, std::string(what) + ": " + std::to_string(in_.size() - at_) + " unexpected trailing bytes"};
  return ok();
}

void begin_message(std::vector<std::byte>& out, std::uint16_t type, std::uint32_t request_id) {
  out.clear();
  Writer w(out);
  w.u32(kMagic);
  w.u16(kVersion);
  w.u16(type);
  w.u32(request_id);
  w.u32(0);
}

void finish_message(std::vector<std::byte>& out) {
  const auto payload = static_cast<std::uint32_t>(out.size() - kHeaderBytes);
  std::memcpy(out.data() + 12, &payload, 4);
}

Result<Header> parse_header(std::span<const std::byte> datagram, std::span<const std::byte>& payload) {
  if (datagram.size() < kHeaderBytes)
    return Error{Errc::kInvalidArgument, "message of " + std::to_string(datagram.size()) + " bytes is shorter than a header"};
  Reader r(datagram.first(kHeaderBytes));
  const std::uint32_t magic = r.u32();
  const std::uint16_t version = r.u16();
  Header h;
  h.type = r.u16();
  h.request_id = r.u32();
  const std::uint32_t payload_bytes = r.u32();
  if (magic != kMagic) return Error{Errc::kInvalidArgument, "not a weft message (bad magic)"};
  if (version != kVersion)
    return Error{Errc::kUnsupported, "protocol version " + std::to_string(version) + " is not " + std::to_string(kVersion) +
                                         "; use a client and weftd of the same release"};
  if (payload_bytes != datagram.size() - kHeaderBytes)
    return Error{Errc::kInvalidArgument, "message says " + std::to_string(payload_bytes) + " payload bytes, carries " +
                                             std::to_string(datagram.size() - kHeaderBytes)};
  payload = datagram.subspan(kHeaderBytes);
  return h;
}

void write_config(Writer& w, const TopicConfig& c) {
  w.u32(c.partitions);
  w.u64(c.ring_capacity_bytes);
  w.u64(c.max_batch_bytes);
  w.i64(c.retention_bytes);
  w.i64(c.retention_ms);
  w.u8(static_cast<std::uint8_t>(c.fsync));
  w.i64(c.fsync_interval_ms);
  w.u32(c.producer_slots);
  w.u32(c.consumer_slots);
  w.u8(c.consumer_flow_control ? 1 : 0);
  w.i64(c.segment_bytes);
  w.i64(c.segment_ms);
}

TopicConfig read_config(Reader& r) {
  TopicConfig c;
  c.partitions = r.u32();
  c.ring_capacity_bytes = r.u64();
  c.max_batch_bytes = r.u64();
  c.retention_bytes = r.i64();
  c.retention_ms = r.i64();
  const std::uint8_t fsync = r.u8();
  c.fsync = fsync <= 2 ? static_cast<FsyncPolicy>(fsync) : FsyncPolicy::kNone;
  c.fsync_interval_ms = r.i64();
  c.producer_slots = r.u32();
  c.consumer_slots = r.u32();
  c.consumer_flow_control = r.u8() != 0;
  c.segment_bytes = r.i64();
  c.segment_ms = r.i64();
  return c;
}

void write_topic_info(Writer& w, const TopicInfo& info) {
  w.str(info.name);
  w.u64(info.id);
  write_config(w, info.config);
  w.u32(static_cast<std::uint32_t>(info.partitions.size()));
  for (const PartitionStats& s : info.partitions) {
    w.u32(s.partition);
    w.i64(s.start_offset.value);
    w.i64(s.end_offset.value);
    w.u64(s.records);
    w.u64(s.bytes);
    w.u32(s.producers);
    w.u32(s.consumers);
    w.u32(s.lapped_consumers);
    w.u64(s.lapped_events);
    w.u64(s.back_pressure_events);
    w.u64(s.sealed_claims);
    w.str(s.memory);
    w.i64(s.log_start_offset.value);
    w.i64(s.log_end_offset.value);
    w.u64(s.log_bytes);
    w.str(s.log_error);
  }
}

TopicInfo read_topic_info(Reader& r) {
  TopicInfo info;
  info.name = r.str();
  info.id = r.u64();
  info.config = read_config(r);
  const std::uint32_t n = r.u32();
  for (std::uint32_t i = 0; i < n && i <= 10'000 && !r.failed(); ++i) {
    PartitionStats s;
    s.partition = r.u32();
    s.start_offset = Offset{r.i64()};
    s.end_offset = Offset{r.i64()};
    s.records = r.u64();
    s.bytes = r.u64();
    s.producers = r.u32();
    s.consumers = r.u32();
    s.lapped_consumers = r.u32();
    s.lapped_events = r.u64();
    s.back_pressure_events = r.u64();
    s.sealed_claims = r.u64();
    s.memory = r.str();
    s.log_start_offset = Offset{r.i64()};
    s.log_end_offset = Offset{r.i64()};
    s.log_bytes = r.u64();
    s.log_error = r.str();
    info.partitions.push_back(std::move(s));
  }
  return info;
}

Result<void> send_message(int socket_fd, std::span<const std::byte> message, int fd) {
  if (fd >= 0) return send_fd(socket_fd, fd, message);
  ssize_t n;
  do n = send(socket_fd, message.data(), message.size(), MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) return os_error(Errc::kUnavailable, "sending to the weft node's socket", errno);
  return ok();
}

int unread_sent_bytes(int socket_fd) {
  if (!kernel_reports_unread_bytes()) return -1;
  int unread = 0;
  return ioctl(socket_fd, SIOCOUTQ, &unread) == 0 ? unread : -1;
}

bool kernel_reports_unread_bytes() {
  static const bool reports = [] {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) return false;
    const UniqueFd sender(pair[0]), receiver(pair[1]);
    const std::byte probe{1};
    int unread = 0;
    return send(sender.get(), &probe, 1, MSG_NOSIGNAL) == 1 && ioctl(sender.get(), SIOCOUTQ, &unread) == 0 && unread > 0;
  }();
  return reports;
}

Result<void> receive_message(int socket_fd, std::vector<std::byte>& buffer, std::size_t max_bytes, UniqueFd* fd) {
  buffer.resize(max_bytes + 1);  // one byte more than allowed tells an oversized datagram apart
  iovec iov{buffer.data(), buffer.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 2)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do n = recvmsg(socket_fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    const int error = errno;
    buffer.clear();
    if (error == EAGAIN) return os_error(Errc::kUnavailable, "receiving from a weft socket", error);
    return os_error(Errc::kAborted, "receiving from a weft socket", error);
  }
  // Own every descriptor that arrived, so none leaks whatever happens next.
  std::vector<UniqueFd> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    for (std::size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
      int received = -1;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.emplace_back(received);
    }
  }
  buffer.resize(static_cast<std::size_t>(n));
  if (n == 0) return Error{Errc::kAborted, "the peer closed the connection"};
  if ((msg.msg_flags & MSG_TRUNC) != 0 || buffer.size() > max_bytes)
    return Error{Errc::kInvalidArgument, "message larger than the limit of " + std::to_string(max_bytes) + " bytes"};
  if ((msg.msg_flags & MSG_CTRUNC) != 0 || fds.size() > 1)
    return Error{Errc::kInvalidArgument, "message carried more than one file descriptor"};
  if (!fds.empty()) {
    if (fd == nullptr) return Error{Errc::kInvalidArgument, "unexpected file descriptor attached to a message"};
    *fd = std::move(fds.front());
  }
  return ok();
}

std::string default_socket_path() {
  if (const char* env = std::getenv("WEFT_SOCKET"); env != nullptr && *env != '\0') return env;
  if (geteuid() == 0) return "/run/weft/weftd.sock";
  if (const char* runtime = std::getenv("XDG_RUNTIME_DIR"); runtime != nullptr && *runtime != '\0')
    return std::string(runtime) + "/weft/weftd.sock";
  return "/tmp/weft-" + std::to_string(geteuid()) + "/weftd.sock";
}

Result<void> check_socket_directory(const std::string& socket_path) {
  const std::size_t slash = socket_path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : socket_path.substr(0, slash));
  // The entry and what it leads to: a symbolic link another user made (to /tmp, say) would
  // otherwise pass as the root-owned, sticky directory it points at.
  struct stat entry{};
  struct stat st{};
  if (lstat(dir.c_str(), &entry) != 0 || stat(dir.c_str(), &st) != 0) return os_error(Errc::kNotFound, "socket directory " + dir, errno);
  for (const struct stat* owned : {&entry, &st})
    if (owned->st_uid != geteuid() && owned->st_uid != 0)
      return Error{Errc::kPermissionDenied, "socket directory " + dir + (owned == &entry && S_ISLNK(entry.st_mode) ? " is a link that" : "") +
                                                " belongs to uid " + std::to_string(owned->st_uid) +
                                                ", not to this user or root: refusing a socket someone else may have planted"};
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0)
    return Error{Errc::kPermissionDenied, "socket directory " + dir + " is writable by other users and not sticky: refusing it"};
  return ok();
}

}  // namespace weft::local

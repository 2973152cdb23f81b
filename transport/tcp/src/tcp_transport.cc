#include "weft/transport/tcp.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "weft/fabric/region_table.h"
#include "weft/fabric/shared_memory.h"
#include "weft/fabric/socket_address.h"

namespace weft {
namespace {

// The last byte is the link protocol's version: 2 since the replication handshake (a node of
// version 1 neither sends nor answers its messages, so the two could not replicate anyway).
constexpr std::array<char, 8> kHello = {'W', 'E', 'F', 'T', 'L', 'N', 'K', '2'};

// Why `theirs` is not our hello, for the error that ends the link.
std::string bad_hello(const char* theirs, const std::string& peer) {
  if (std::memcmp(theirs, kHello.data(), kHello.size() - 1) == 0)
    return "the peer " + peer + " speaks weft link protocol " + std::string(1, theirs[kHello.size() - 1]) + ", this node " +
           std::string(1, kHello.back()) + ": every node of a cluster must run the same weft release";
  return "the peer " + peer + " is not a weft link (bad hello)";
}

enum : std::uint8_t { kOpWrite = 1, kOpSend = 2 };

// On the wire in the host's byte order: both ends of a weft cluster are x86-64 or both are not
// (a mixed cluster would need the hello to carry the order; none exists).
struct FrameHeader {
  std::uint8_t op = 0;
  std::uint8_t reserved[3] = {};
  std::uint32_t immediate = 0;
  std::uint32_t key = 0;
  std::uint32_t length = 0;
  std::uint64_t offset = 0;
};
static_assert(sizeof(FrameHeader) == 24);

constexpr std::size_t kStagingBytes = 64 * 1024;
constexpr std::size_t kDirectReadBytes = 16 * 1024;  // payloads at least this large skip staging
constexpr std::size_t kCompletionSlots = 2 * kLinkQueueDepth;
constexpr std::size_t kMaxIovPerCall = 64;

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(left);
}

// Sends or receives exactly `length` bytes on a non-blocking socket before `deadline`.
Result<void> exchange_exactly(int fd, void* data, std::size_t length, bool sending, Clock::time_point deadline,
                              const std::string& peer) {
  auto* bytes = static_cast<char*>(data);
  std::size_t done = 0;
  while (done < length) {
    const ssize_t n = sending ? ::send(fd, bytes + done, length - done, MSG_NOSIGNAL | MSG_DONTWAIT)
                              : ::recv(fd, bytes + done, length - done, MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n == 0) return Error{Errc::kUnavailable, "link handshake with " + peer + ": the peer closed the connection"};
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return os_error(Errc::kUnavailable, "link handshake with " + peer, errno);
    pollfd p{fd, static_cast<short>(sending ? POLLOUT : POLLIN), 0};
    const int wait = remaining_ms(deadline);
    if (wait == 0 || ::poll(&p, 1, wait) == 0) {
      return Error{Errc::kUnavailable, "link handshake with " + peer + " timed out (is it a weft replication port?)"};
    }
  }
  return ok();
}

// Each side sends its hello. The connecting side checks the listener's lazily (its first bytes),
// so connect() never waits on the peer's accept(); the listener checks the peer's before it hands
// out the link, a little at a time in accept() (TcpListener), never waiting in it.
Result<void> send_hello(int fd, int timeout_ms, const std::string& peer) {
  const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  return exchange_exactly(fd, const_cast<char*>(kHello.data()), kHello.size(), true, deadline, peer);
}

void tune_socket(int fd, const TcpTransportOptions& options) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (options.socket_buffer_bytes > 0) {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &options.socket_buffer_bytes, sizeof options.socket_buffer_bytes);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &options.socket_buffer_bytes, sizeof options.socket_buffer_bytes);
  }
}

struct Shared {
  TcpTransportOptions options;
  RegionTable regions;
};

class TcpLink final : public Link {
 public:
  TcpLink(std::shared_ptr<Shared> shared, UniqueFd socket, UniqueFd epoll, std::string peer, bool hello_pending)
      : shared_(std::move(shared)), socket_(std::move(socket)), epoll_(std::move(epoll)), peer_(std::move(peer)),
        hello_pending_(hello_pending) {
    ops_.resize(kLinkQueueDepth);
    completions_.resize(kCompletionSlots);
    messages_.resize(kLinkQueueDepth);
    staging_.resize(kStagingBytes);
  }
  ~TcpLink() override = default;

  PostStatus post_write(const RegionDescriptor& remote, std::uint64_t offset, std::span<const std::span<const std::byte>> gather,
                        std::uint32_t immediate, std::uint64_t context) override {
    if (gone_) return PostStatus::kPeerGone;
    if (gather.size() > kLinkMaxGather || remote.key == 0) return PostStatus::kInvalid;
    if (queue_full()) return PostStatus::kQueueFull;
    std::uint64_t length = 0;
    for (const auto& piece : gather) length += piece.size();
    if (length > UINT32_MAX || length > remote.length || offset > remote.length - length) return PostStatus::kInvalid;
    SendOp& op = ops_[posted_ % kLinkQueueDepth];
    op.header = FrameHeader{kOpWrite, {}, immediate, remote.key, static_cast<std::uint32_t>(length), offset};
    op.iov_count = 0;
    op.iov[op.iov_count++] = iovec{&op.header, sizeof op.header};
    for (const auto& piece : gather) {
      if (!piece.empty()) op.iov[op.iov_count++] = iovec{const_cast<std::byte*>(piece.data()), piece.size()};
    }
    op.iov_next = 0;
    op.context = context;
    op.is_write = true;
    return post(op);
  }

  PostStatus post_send(std::span<const std::byte> message, std::uint64_t context) override {
    if (gone_) return PostStatus::kPeerGone;
    if (message.size() > kLinkMaxMessageBytes) return PostStatus::kInvalid;
    if (queue_full()) return PostStatus::kQueueFull;
    SendOp& op = ops_[posted_ % kLinkQueueDepth];
    op.header = FrameHeader{kOpSend, {}, 0, 0, static_cast<std::uint32_t>(message.size()), 0};
    if (!message.empty()) std::memcpy(op.message.data(), message.data(), message.size());
    op.iov_count = 0;
    op.iov[op.iov_count++] = iovec{&op.header, sizeof op.header};
    if (!message.empty()) op.iov[op.iov_count++] = iovec{op.message.data(), message.size()};
    op.iov_next = 0;
    op.context = context;
    op.is_write = false;
    return post(op);
  }

  std::size_t poll(std::span<LinkCompletion> out) override {
    if (!gone_) {
      flush();
      receive();
    }
    if (gone_) drain_after_end();
    std::size_t n = 0;
    while (n < out.size() && cq_head_ != cq_tail_) {
      const LinkCompletion& c = completions_[cq_head_ % kCompletionSlots];
      ++cq_head_;
      if (c.kind == LinkCompletion::Kind::kWriteDone || c.kind == LinkCompletion::Kind::kSendDone) {
        ++done_polled_;  // frees the operation's slot (as polling a send completion does in RDMA)
      } else if (c.kind != LinkCompletion::Kind::kPeerGone) {
        --received_in_cq_;
      }
      out[n++] = c;
    }
    return n;
  }

  int event_fd() const noexcept override { return epoll_.get(); }
  bool connected() const noexcept override { return !gone_; }
  const Error& error() const noexcept override { return error_; }
  const std::string& peer_address() const noexcept override { return peer_; }
  void close() noexcept override { end(Error{Errc::kAborted, "the link to " + peer_ + " was closed by this side"}); }
  void accept_writes() noexcept override { writes_accepted_ = true; }

 private:
  struct SendOp {
    FrameHeader header;
    std::array<iovec, kLinkMaxGather + 2> iov{};
    std::size_t iov_count = 0;
    std::size_t iov_next = 0;  // the first iovec not wholly sent (sent parts are trimmed off it)
    std::uint64_t context = 0;
    bool is_write = false;
    std::array<std::byte, kLinkMaxMessageBytes> message{};
    std::vector<std::byte> owned;  // what the socket did not take at once, copied (capacity kept)
  };

  // A slot is free once its completion was polled and its bytes are on the wire.
  bool queue_full() const noexcept { return posted_ - done_polled_ >= kLinkQueueDepth || posted_ - sent_ >= kLinkQueueDepth; }

  // Sends what the socket takes now; what it does not take is copied into the operation, so the
  // operation completes at once and never reads the caller's bytes later. A follower that stops
  // reading therefore holds no memory of the caller's (a leader's ring, which the replicator
  // writes from), only the link's copy. Completions come in posting order.
  PostStatus post(SendOp& op) {
    ++posted_;
    flush();
    if (gone_) return PostStatus::kPeerGone;  // not posted after all: no completion comes
    if (sent_ < posted_ && op.is_write) {  // a send's bytes are the operation's already
      std::size_t left = 0;
      for (std::size_t k = op.iov_next; k < op.iov_count; ++k) left += op.iov[k].iov_len;
      op.owned.resize(left);
      std::size_t at = 0;
      for (std::size_t k = op.iov_next; k < op.iov_count; ++k) {
        std::memcpy(op.owned.data() + at, op.iov[k].iov_base, op.iov[k].iov_len);
        at += op.iov[k].iov_len;
      }
      op.iov[0] = iovec{op.owned.data(), left};
      op.iov_count = 1;
      op.iov_next = 0;
    }
    LinkCompletion done;
    done.kind = op.is_write ? LinkCompletion::Kind::kWriteDone : LinkCompletion::Kind::kSendDone;
    done.context = op.context;
    push(done);
    return PostStatus::kOk;
  }

  void push(const LinkCompletion& c) {
    completions_[cq_tail_ % kCompletionSlots] = c;
    ++cq_tail_;
  }

  // Sends what is posted, as far as the socket takes it. Never blocks.
  void flush() {
    while (sent_ < posted_ && !gone_) {
      std::array<iovec, kMaxIovPerCall> iov;
      std::size_t count = 0;
      for (std::uint64_t i = sent_; i < posted_ && count < kMaxIovPerCall; ++i) {
        SendOp& op = ops_[i % kLinkQueueDepth];
        for (std::size_t k = op.iov_next; k < op.iov_count && count < kMaxIovPerCall; ++k) iov[count++] = op.iov[k];
      }
      msghdr message{};
      message.msg_iov = iov.data();
      message.msg_iovlen = count;
      const ssize_t n = ::sendmsg(socket_.get(), &message, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        end(os_error(Errc::kUnavailable, "link to " + peer_ + ": send", errno));
        return;
      }
      consume_sent(static_cast<std::size_t>(n));
    }
    want_output(sent_ < posted_ && !gone_);
  }

  // Trims `n` sent bytes off the oldest operations; those wholly sent free their slots.
  void consume_sent(std::size_t n) {
    while (sent_ < posted_) {
      SendOp& op = ops_[sent_ % kLinkQueueDepth];
      while (n > 0 && op.iov_next < op.iov_count) {
        iovec& v = op.iov[op.iov_next];
        if (n < v.iov_len) {
          v.iov_base = static_cast<char*>(v.iov_base) + n;
          v.iov_len -= n;
          n = 0;
        } else {
          n -= v.iov_len;
          ++op.iov_next;
        }
      }
      if (op.iov_next < op.iov_count) break;
      // A large copy is let go: 256 slots each keeping a 1 MiB write's capacity would hold 256 MiB
      // after one stall of the peer.
      if (op.owned.capacity() > kStagingBytes) op.owned = std::vector<std::byte>();
      ++sent_;  // its completion went out when it was posted
    }
  }

  void want_output(bool output) {
    if (output == epoll_out_ || !epoll_.valid()) return;
    epoll_event event{};
    event.events = EPOLLIN | (output ? EPOLLOUT : 0u);
    event.data.fd = socket_.get();
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, socket_.get(), &event) == 0) epoll_out_ = output;
  }

  // Reads frames while completions have room; a frame's payload goes straight to its place.
  void receive() {
    std::size_t budget = 4 << 20;  // bytes per poll, so one busy link cannot starve its caller's other work
    socket_drained_ = false;
    while (!gone_ && received_in_cq_ < kLinkQueueDepth && budget > 0) {
      if (hello_pending_) {
        if (staged() < kHello.size()) {
          if (!fill_staging(budget)) return;
          continue;
        }
        if (std::memcmp(staging_.data() + stage_begin_, kHello.data(), kHello.size()) != 0) {
          end(Error{Errc::kCorrupt, bad_hello(reinterpret_cast<const char*>(staging_.data() + stage_begin_), peer_)});
          return;
        }
        stage_begin_ += kHello.size();
        hello_pending_ = false;
        continue;
      }
      if (!in_payload_) {
        if (staged() >= sizeof(FrameHeader)) {
          FrameHeader header;
          std::memcpy(&header, staging_.data() + stage_begin_, sizeof header);
          stage_begin_ += sizeof header;
          if (!start_payload(header)) return;
          continue;
        }
        // After a large frame, read only the next header: its payload then goes straight to
        // its region rather than through staging (one more recv, one copy less).
        if (!fill_staging(budget, last_frame_large_ ? sizeof(FrameHeader) - staged() : staging_.size())) return;
        continue;
      }
      if (payload_left_ > 0 && staged() > 0) {
        if (!locate_payload()) return;
        const std::size_t n = std::min<std::size_t>(payload_left_, staged());
        std::memcpy(payload_at_, staging_.data() + stage_begin_, n);
        stage_begin_ += n;
        advance_payload(n);
      }
      if (payload_left_ > 0) {
        if (payload_left_ >= kDirectReadBytes) {
          if (socket_drained_) return;
          if (!locate_payload()) return;
          const ssize_t n = ::recv(socket_.get(), payload_at_, payload_left_, MSG_DONTWAIT);
          if (!received(n, true)) return;
          socket_drained_ = static_cast<std::size_t>(n) < payload_left_;
          advance_payload(static_cast<std::size_t>(n));
          budget -= std::min<std::size_t>(budget, static_cast<std::size_t>(n));
        } else if (!fill_staging(budget)) {
          return;
        }
        continue;
      }
      push(pending_);
      ++received_in_cq_;
      in_payload_ = false;
    }
  }

  std::size_t staged() const noexcept { return stage_end_ - stage_begin_; }

  // A write's place is looked up again before each piece lands: its region may have been
  // withdrawn (and its memory freed) while the frame was still arriving, between two polls.
  bool locate_payload() {
    if (!payload_is_write_) return true;
    payload_at_ = shared_->regions.find(payload_key_, payload_offset_, payload_left_);
    if (payload_at_ != nullptr) return true;
    end(Error{Errc::kCorrupt, "the peer " + peer_ + " went on writing into region key " + std::to_string(payload_key_) +
                                  " after it was withdrawn here; the link is closed"});
    return false;
  }

  void advance_payload(std::size_t n) noexcept {
    payload_at_ += n;
    payload_offset_ += n;
    payload_left_ -= n;
  }

  // False when nothing more can be read now (or the link ended).
  bool fill_staging(std::size_t& budget, std::size_t at_most = kStagingBytes) {
    if (stage_begin_ == stage_end_) {
      stage_begin_ = stage_end_ = 0;
    } else if (stage_begin_ > 0) {
      std::memmove(staging_.data(), staging_.data() + stage_begin_, staged());
      stage_end_ -= stage_begin_;
      stage_begin_ = 0;
    }
    if (socket_drained_) return false;
    const std::size_t asked = std::min(at_most, staging_.size() - stage_end_);
    const ssize_t n = ::recv(socket_.get(), staging_.data() + stage_end_, asked, MSG_DONTWAIT);
    if (!received(n, in_payload_ || staged() > 0)) return false;
    socket_drained_ = static_cast<std::size_t>(n) < asked;
    stage_end_ += static_cast<std::size_t>(n);
    budget -= std::min<std::size_t>(budget, static_cast<std::size_t>(n));
    return true;
  }

  bool received(ssize_t n, bool mid_frame) {
    if (n > 0) return true;
    if (n == 0) {
      end(Error{Errc::kUnavailable, mid_frame ? "the link to " + peer_ + " ended in the middle of a frame (the peer is gone)"
                                              : "the peer " + peer_ + " closed the link"});
      return false;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return false;
    end(os_error(Errc::kUnavailable, "link to " + peer_ + ": receive", errno));
    return false;
  }

  bool start_payload(const FrameHeader& header) {
    pending_ = LinkCompletion{};
    if (header.op == kOpWrite) {
      if (!writes_accepted_) {
        end(Error{Errc::kPermissionDenied, "the peer " + peer_ + " wrote before this side accepted its writes; the link is closed"});
        return false;
      }
      std::byte* at = shared_->regions.find(header.key, header.offset, header.length);
      if (at == nullptr) {
        end(Error{Errc::kCorrupt, "the peer " + peer_ + " wrote " + std::to_string(header.length) + " bytes at offset " +
                                      std::to_string(header.offset) + " of region key " + std::to_string(header.key) +
                                      ", outside every region registered here; the link is closed"});
        return false;
      }
      pending_.kind = LinkCompletion::Kind::kWriteReceived;
      pending_.immediate = header.immediate;
      pending_.length = header.length;
      payload_at_ = at;
      payload_is_write_ = true;
      payload_key_ = header.key;
      payload_offset_ = header.offset;
    } else if (header.op == kOpSend && header.length <= kLinkMaxMessageBytes) {
      auto& slot = messages_[messages_received_++ % kLinkQueueDepth];
      pending_.kind = LinkCompletion::Kind::kMessageReceived;
      pending_.message = std::span<const std::byte>(slot.data(), header.length);
      payload_at_ = slot.data();
      payload_is_write_ = false;
    } else {
      end(Error{Errc::kCorrupt, "the peer " + peer_ + " sent a malformed frame (operation " + std::to_string(header.op) +
                                    ", length " + std::to_string(header.length) + "); the link is closed"});
      return false;
    }
    payload_left_ = header.length;
    last_frame_large_ = header.length >= kDirectReadBytes;
    in_payload_ = true;
    return true;
  }

  void end(Error why) {
    if (gone_) return;
    gone_ = true;
    error_ = std::move(why);
    // The socket stays open (and so readable, at its end) until the link is destroyed, so that
    // a caller waiting on event_fd() wakes and polls the kPeerGone.
    ::shutdown(socket_.get(), SHUT_RDWR);
  }

  // After the end: kPeerGone, once (every operation completed when it was posted; one whose
  // post found the link ended was refused with kPeerGone).
  void drain_after_end() {
    sent_ = posted_;
    if (!gone_reported_ && cq_tail_ - cq_head_ < kCompletionSlots) {
      LinkCompletion gone;
      gone.kind = LinkCompletion::Kind::kPeerGone;
      push(gone);
      gone_reported_ = true;
    }
  }

  std::shared_ptr<Shared> shared_;
  UniqueFd socket_;
  UniqueFd epoll_;
  std::string peer_;
  Error error_{Errc::kOk, {}};
  bool hello_pending_;  // the connecting side has yet to read the listener's hello
  bool gone_ = false;
  bool gone_reported_ = false;
  bool epoll_out_ = false;

  // Posted operations: [done_polled_, posted_) hold slots; [sent_, posted_) are not yet on the wire.
  std::vector<SendOp> ops_;
  std::uint64_t posted_ = 0;
  std::uint64_t sent_ = 0;
  std::uint64_t done_polled_ = 0;

  std::vector<LinkCompletion> completions_;
  std::uint64_t cq_head_ = 0;
  std::uint64_t cq_tail_ = 0;
  std::size_t received_in_cq_ = 0;  // receive completions not yet handed out (at most the queue depth)

  std::vector<std::array<std::byte, kLinkMaxMessageBytes>> messages_;
  std::uint64_t messages_received_ = 0;
  std::vector<std::byte> staging_;
  std::size_t stage_begin_ = 0;
  std::size_t stage_end_ = 0;
  bool in_payload_ = false;
  bool last_frame_large_ = false;
  // A recv in this poll() returned less than it asked: the socket held no more then, and one
  // more recv would only fail with EAGAIN. What arrives since keeps event_fd() readable.
  bool socket_drained_ = false;
  std::byte* payload_at_ = nullptr;  // a write's: valid until the next poll only (locate_payload)
  std::size_t payload_left_ = 0;
  bool payload_is_write_ = false;
  bool writes_accepted_ = false;  // accept_writes(): until then a write ends the link
  std::uint32_t payload_key_ = 0;
  std::uint64_t payload_offset_ = 0;
  LinkCompletion pending_;
};

Result<std::unique_ptr<Link>> make_link(const std::shared_ptr<Shared>& shared, UniqueFd socket, std::string peer, bool accepting) {
  if (!accepting) tune_socket(socket.get(), shared->options);  // the listener tuned it when it took it
  WEFT_TRY_VOID(send_hello(socket.get(), shared->options.handshake_timeout_ms, peer));
  UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll.valid()) return os_error(Errc::kIo, "epoll_create1 for a link", errno);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.fd = socket.get();
  if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, socket.get(), &event) != 0) return os_error(Errc::kIo, "epoll_ctl for a link", errno);
  return std::unique_ptr<Link>(new TcpLink(shared, std::move(socket), std::move(epoll), std::move(peer), !accepting));
}

class TcpListener final : public LinkListener {
 public:
  TcpListener(std::shared_ptr<Shared> shared, UniqueFd socket, std::string address)
      : shared_(std::move(shared)), socket_(std::move(socket)), address_(std::move(address)) {}

  Result<std::unique_ptr<Link>> accept() override {
    // Every peer waiting is taken into the handshake, which goes on over later calls: one that
    // says nothing (a port scan, a health check) costs a slot until its timeout, never a wait.
    // Refusals are said only after the handshakes under way had their turn: a steady trickle of
    // newcomers must not keep those from finishing or timing out.
    std::optional<Error> refused;
    for (int i = 0; i < 16; ++i) {
      SocketAddress peer;
      peer.length = sizeof peer.storage;
      const int fd = ::accept4(socket_.get(), peer.get(), &peer.length, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE) {
          // The connection stays queued and the listener readable: its caller would wake at once,
          // for ever. It is taken and closed with the spare descriptor instead.
          const int error = errno;
          (void)shed_waiting_connection(socket_.get(), spare_);
          refused = os_error(Errc::kResourceExhausted, "accept on " + address_ + " (a waiting link was closed)", error);
          break;
        }
        return os_error(Errc::kIo, "accept on " + address_, errno);
      }
      UniqueFd socket(fd);
      if (handshaking_.size() >= kMaxHandshakes) {
        refused = Error{Errc::kResourceExhausted, "link from " + peer.to_string() + " refused: " + std::to_string(kMaxHandshakes) + " others are in their handshake"};
        continue;  // closed
      }
      tune_socket(fd, shared_->options);
      handshaking_.push_back(Handshake{std::move(socket), peer.to_string(), {}, 0,
                                       Clock::now() + std::chrono::milliseconds(shared_->options.handshake_timeout_ms)});
    }
    // One pass drops every handshake that ended or timed out (one a call let newcomers take the
    // freed places as fast as they went), and hands out the first link whose hello came.
    const Clock::time_point now = Clock::now();
    std::optional<Error> dropped;
    for (auto it = handshaking_.begin(); it != handshaking_.end();) {
      Handshake& h = *it;
      ssize_t got = 0;
      while (h.have < h.theirs.size() && (got = ::recv(h.socket.get(), h.theirs.data() + h.have, h.theirs.size() - h.have, MSG_DONTWAIT)) > 0) {
        h.have += static_cast<std::size_t>(got);
      }
      const int error = errno;
      if (h.have == h.theirs.size()) {
        Handshake done = std::move(h);
        it = handshaking_.erase(it);
        if (done.theirs == kHello) return make_link(shared_, std::move(done.socket), done.peer, true);
        if (!dropped) dropped = Error{Errc::kCorrupt, "link handshake: " + bad_hello(done.theirs.data(), done.peer)};
        continue;
      }
      const bool closed = got == 0 || (got < 0 && error != EAGAIN && error != EWOULDBLOCK && error != EINTR);
      if (closed || now >= h.deadline) {
        if (!dropped)
          dropped = Error{Errc::kUnavailable, closed ? "link handshake with " + h.peer + ": the peer closed the connection"
                                                     : "link handshake with " + h.peer + " timed out (is it a weft replication port?)"};
        it = handshaking_.erase(it);
        continue;
      }
      ++it;
    }
    if (refused) return std::move(*refused);
    if (dropped) return std::move(*dropped);
    return Error{Errc::kUnavailable, "no peer is waiting"};
  }
  int event_fd() const noexcept override { return socket_.get(); }
  const std::string& address() const noexcept override { return address_; }

 private:
  static constexpr std::size_t kMaxHandshakes = 64;
  struct Handshake {
    UniqueFd socket;
    std::string peer;
    std::array<char, 8> theirs;
    std::size_t have;
    Clock::time_point deadline;
  };
  std::shared_ptr<Shared> shared_;
  UniqueFd socket_;
  std::string address_;
  std::vector<Handshake> handshaking_;
  UniqueFd spare_ = spare_descriptor();  // see shed_waiting_connection
};

class TcpTransport final : public Transport {
 public:
  explicit TcpTransport(TcpTransportOptions options) : shared_(std::make_shared<Shared>()) { shared_->options = options; }

  std::string_view name() const noexcept override { return "tcp"; }
  Result<LocalRegion> register_region(std::span<std::byte> bytes) override { return shared_->regions.add(bytes); }
  Result<void> deregister_region(std::uint32_t key) override { return shared_->regions.remove(key); }

  Result<std::unique_ptr<LinkListener>> listen(std::string_view address) override {
    WEFT_TRY(SocketAddress where, parse_socket_address(address, "link listen address"));
    WEFT_TRY(UniqueFd socket, listen_tcp(where, 128, "link listen address", "stop what listens there or pass another --replication-listen"));
    WEFT_TRY(SocketAddress bound, local_address(socket.get()));
    return std::unique_ptr<LinkListener>(new TcpListener(shared_, std::move(socket), bound.to_string()));
  }

  Result<std::unique_ptr<Link>> connect(std::string_view address, int timeout_ms) override {
    WEFT_TRY(SocketAddress where, parse_socket_address(address, "link peer address"));
    const std::string peer(address);
    UniqueFd socket(::socket(where.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!socket.valid()) return os_error(Errc::kIo, "link socket", errno);
    if (::connect(socket.get(), where.get(), where.length) != 0) {
      if (errno != EINPROGRESS) return os_error(Errc::kUnavailable, "link connect to " + peer, errno);
      pollfd p{socket.get(), POLLOUT, 0};
      if (::poll(&p, 1, timeout_ms) <= 0) return Error{Errc::kUnavailable, "link connect to " + peer + " timed out"};
      int failure = 0;
      socklen_t length = sizeof failure;
      getsockopt(socket.get(), SOL_SOCKET, SO_ERROR, &failure, &length);
      if (failure != 0) return os_error(Errc::kUnavailable, "link connect to " + peer, failure);
    }
    return make_link(shared_, std::move(socket), peer, false);
  }

 private:
  std::shared_ptr<Shared> shared_;
};

}  // namespace

std::unique_ptr<Transport> make_tcp_transport(TcpTransportOptions options) { return std::make_unique<TcpTransport>(options); }

}  // namespace weft

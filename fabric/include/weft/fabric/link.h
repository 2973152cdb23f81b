// The port through which nodes move bytes to each other: declared here, implemented under
// transport/ (tcp/ now; rdma/ and dpdk/ later) and by an in-process loopback for tests.
//
// It is shaped by RDMA, the fastest link, so that the verbs adapter is a thin mapping:
//
//   this interface                     an RDMA RC queue pair
//   Transport (regions, links)         a protection domain with its memory regions
//   Transport::register_region         ibv_reg_mr with remote write access (key = rkey)
//   Link::post_write                   ibv_post_send, IBV_WR_RDMA_WRITE_WITH_IMM, a gather list
//   Link::post_send                    ibv_post_send, IBV_WR_SEND from a registered bounce slot
//   Link::poll                         ibv_poll_cq; receives are re-posted by the link itself
//   Link::event_fd                     the completion channel's fd
//   kWriteReceived                     IBV_WC_RECV_RDMA_WITH_IMM: the immediate and the length,
//                                      never the offset (the protocol carries what it needs)
//   LinkCompletion::flushed            IBV_WC_WR_FLUSH_ERR once the queue pair is in error
//
// Socket transports frame the same operations and copy into the receiver's region.
//
// Guarantees on one link: writes and messages land at the peer in the order they were posted,
// and a write's bytes are in the peer's region before its kWriteReceived is polled there. A peer
// that writes outside a region it was given ends the link (as an RDMA remote access error does).
//
// Threads: a Transport's region calls and connect/listen may be made from any thread; one Link
// or LinkListener is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "weft/fabric/result.h"

namespace weft {

// What a peer needs to write into one of our regions; we send it to the peer in a message.
struct RegionDescriptor {
  std::uint64_t address = 0;  // RDMA: the region's virtual address; socket transports ignore it
  std::uint64_t length = 0;
  std::uint32_t key = 0;      // RDMA: the rkey
  std::uint32_t reserved = 0;
};
static_assert(sizeof(RegionDescriptor) == 24, "sent as bytes in control messages");

struct LocalRegion {
  std::span<std::byte> bytes;
  RegionDescriptor descriptor;
};

inline constexpr std::size_t kLinkMaxGather = 8;         // gather entries per write (an RDMA NIC takes 16+)
inline constexpr std::size_t kLinkMaxMessageBytes = 1024;  // one control message
inline constexpr std::size_t kLinkQueueDepth = 256;       // operations posted and not yet polled as done

enum class PostStatus : std::uint8_t {
  kOk,
  kQueueFull,  // kLinkQueueDepth operations are outstanding: poll() for their completions first
  kInvalid,    // too many gather entries, a message too long, an unknown region (a caller's bug)
  kPeerGone,   // the link has ended; error() says why
};

struct LinkCompletion {
  enum class Kind : std::uint8_t {
    kWriteDone,        // a post_write finished: its source bytes may change again
    kSendDone,         // a post_send finished
    kWriteReceived,    // a peer's write landed in one of our regions: `immediate`, `length`
    kMessageReceived,  // a peer's message: `message`, valid until the next poll()
    kPeerGone,         // the link ended (error() says why); the last completion it gives
  };
  Kind kind = Kind::kWriteDone;
  bool flushed = false;          // kWriteDone/kSendDone: the link ended before the bytes left
  std::uint32_t immediate = 0;   // kWriteReceived
  std::uint32_t length = 0;      // kWriteReceived: bytes written
  std::uint64_t context = 0;     // kWriteDone/kSendDone: the caller's value from post_*
  std::span<const std::byte> message;  // kMessageReceived
};

class Link {
 public:
  virtual ~Link() = default;

  // Writes the concatenation of `gather` into the peer's region `remote` at `offset`, then
  // delivers `immediate` with it. The source bytes must not change until kWriteDone for
  // `context` is polled (RDMA reads them from memory while the write is on the wire; TCP
  // copies what its socket does not take at once and completes as it posts). A completion
  // says the source may change, not that the peer has the bytes: its reply says that.
  virtual PostStatus post_write(const RegionDescriptor& remote, std::uint64_t offset,
                                std::span<const std::span<const std::byte>> gather, std::uint32_t immediate,
                                std::uint64_t context) = 0;
  // Sends a control message of at most kLinkMaxMessageBytes (copied before the call returns).
  virtual PostStatus post_send(std::span<const std::byte> message, std::uint64_t context) = 0;
  // Makes progress and hands out up to out.size() completions (never blocks). When it fills
  // `out`, call again: more may be waiting.
  virtual std::size_t poll(std::span<LinkCompletion> out) = 0;
  // Readable when poll() may have something to do (an epoll or completion-channel fd).
  virtual int event_fd() const noexcept = 0;
  // Blocks until event_fd() is readable or `timeout_ms` passes (a convenience for threads that
  // own one link).
  bool wait(int timeout_ms) const noexcept;

  virtual bool connected() const noexcept = 0;
  // Why the link ended (code kOk while it is up).
  virtual const Error& error() const noexcept = 0;
  virtual const std::string& peer_address() const noexcept = 0;
  // Ends the link; the peer sees kPeerGone. Outstanding operations complete (as flushed where
  // the transport still held the caller's bytes) before this side's kPeerGone.
  virtual void close() noexcept = 0;
  // Writes from the peer into this side's regions are refused until this is called: the first
  // one ends the link, landing nowhere (as an RDMA queue pair made without remote write access
  // refuses them until ibv_modify_qp grants it). A side grants them once it trusts the peer
  // (replication: a follower, after the leader's proof of the cluster's secret).
  virtual void accept_writes() noexcept = 0;
};

class LinkListener {
 public:
  virtual ~LinkListener() = default;
  // A link a peer opened, or kUnavailable when none is waiting (never blocks for long: a
  // handshake is bounded). Other errors concern that one peer; the listener keeps listening.
  virtual Result<std::unique_ptr<Link>> accept() = 0;
  virtual int event_fd() const noexcept = 0;
  // The address peers connect to (with the port chosen when listening on port 0).
  virtual const std::string& address() const noexcept = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual std::string_view name() const noexcept = 0;
  // Lets peers of every link of this transport write into `bytes` (which must outlive the
  // registration). The descriptor goes to the peers that should write there.
  virtual Result<LocalRegion> register_region(std::span<std::byte> bytes) = 0;
  // Peers may no longer write there; a write that arrives later ends its link. The caller stops
  // its peers first, as with RDMA (deregistering an MR under a write is a remote access error).
  virtual Result<void> deregister_region(std::uint32_t key) = 0;
  virtual Result<std::unique_ptr<LinkListener>> listen(std::string_view address) = 0;
  virtual Result<std::unique_ptr<Link>> connect(std::string_view address, int timeout_ms) = 0;
};

std::string_view post_status_name(PostStatus status) noexcept;

}  // namespace weft

#include "weft/transport/loopback.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "weft/fabric/region_table.h"
#include "weft/fabric/shared_memory.h"

namespace weft {
namespace {

struct Entry {
  LinkCompletion completion;
  std::vector<std::byte> message;
};

// One end's completion queue, signalled through an eventfd while it holds entries.
struct End {
  std::deque<Entry> queue;
  UniqueFd event{::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
  bool gone = false;
  bool writes_accepted = false;  // Link::accept_writes: until then the other end's writes end the link
  Error error{Errc::kOk, {}};
  std::shared_ptr<RegionTable> regions;  // where the other end's writes land
};

void signal(const End& end) {
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(end.event.get(), &one, sizeof one);
}

struct Channel {
  std::mutex mutex;
  End ends[2];
};

class LoopbackLink final : public Link {
 public:
  LoopbackLink(std::shared_ptr<Channel> channel, int side, std::string peer)
      : channel_(std::move(channel)), side_(side), peer_(std::move(peer)) {}
  ~LoopbackLink() override { close(); }

  PostStatus post_write(const RegionDescriptor& remote, std::uint64_t offset, std::span<const std::span<const std::byte>> gather,
                        std::uint32_t immediate, std::uint64_t context) override {
    if (gather.size() > kLinkMaxGather || remote.key == 0) return PostStatus::kInvalid;
    std::lock_guard lock(channel_->mutex);
    End& self = channel_->ends[side_];
    End& peer = channel_->ends[1 - side_];
    if (self.gone) return PostStatus::kPeerGone;
    if (outstanding_ >= kLinkQueueDepth) return PostStatus::kQueueFull;
    std::uint64_t length = 0;
    for (const auto& piece : gather) length += piece.size();
    if (length > UINT32_MAX || length > remote.length || offset > remote.length - length) return PostStatus::kInvalid;
    ++outstanding_;
    if (!peer.writes_accepted) {
      end_locked(1 - side_, Error{Errc::kPermissionDenied, "the peer wrote before this side accepted its writes; the link is closed"});
      push_done(self, LinkCompletion::Kind::kWriteDone, context, true);
      end_locked(side_, Error{Errc::kUnavailable, "the peer " + peer_ + " closed the link after a write it had not accepted"});
      return PostStatus::kOk;
    }
    std::byte* at = peer.regions->find(remote.key, offset, length);
    if (at == nullptr) {
      // As an RDMA remote access error: the write fails and the link ends on both sides.
      end_locked(1 - side_, Error{Errc::kCorrupt, "the peer wrote " + std::to_string(length) + " bytes at offset " + std::to_string(offset) +
                                                      " of region key " + std::to_string(remote.key) +
                                                      ", outside every region registered here; the link is closed"});
      push_done(self, LinkCompletion::Kind::kWriteDone, context, true);
      end_locked(side_, Error{Errc::kUnavailable, "the peer " + peer_ + " closed the link after a write outside its regions"});
      return PostStatus::kOk;
    }
    for (const auto& piece : gather) {
      if (piece.empty()) continue;
      std::memcpy(at, piece.data(), piece.size());
      at += piece.size();
    }
    Entry received;
    received.completion.kind = LinkCompletion::Kind::kWriteReceived;
    received.completion.immediate = immediate;
    received.completion.length = static_cast<std::uint32_t>(length);
    peer.queue.push_back(std::move(received));
    signal(peer);
    push_done(self, LinkCompletion::Kind::kWriteDone, context, false);
    return PostStatus::kOk;
  }

  PostStatus post_send(std::span<const std::byte> message, std::uint64_t context) override {
    if (message.size() > kLinkMaxMessageBytes) return PostStatus::kInvalid;
    std::lock_guard lock(channel_->mutex);
    End& self = channel_->ends[side_];
    End& peer = channel_->ends[1 - side_];
    if (self.gone) return PostStatus::kPeerGone;
    if (outstanding_ >= kLinkQueueDepth) return PostStatus::kQueueFull;
    ++outstanding_;
    Entry received;
    received.completion.kind = LinkCompletion::Kind::kMessageReceived;
    received.message.assign(message.begin(), message.end());
    peer.queue.push_back(std::move(received));
    signal(peer);
    push_done(self, LinkCompletion::Kind::kSendDone, context, false);
    return PostStatus::kOk;
  }

  std::size_t poll(std::span<LinkCompletion> out) override {
    handed_.clear();  // messages handed out by the previous poll are no longer valid
    std::lock_guard lock(channel_->mutex);
    End& self = channel_->ends[side_];
    std::size_t n = 0;
    while (n < out.size() && !self.queue.empty()) {
      handed_.push_back(std::move(self.queue.front()));
      self.queue.pop_front();
      ++n;
    }
    for (std::size_t i = 0; i < n; ++i) {
      LinkCompletion& c = handed_[i].completion;
      if (c.kind == LinkCompletion::Kind::kMessageReceived) c.message = handed_[i].message;
      if (c.kind == LinkCompletion::Kind::kWriteDone || c.kind == LinkCompletion::Kind::kSendDone) --outstanding_;
      out[i] = c;
    }
    if (self.queue.empty()) {
      std::uint64_t count = 0;
      [[maybe_unused]] const ssize_t r = ::read(self.event.get(), &count, sizeof count);
    }
    return n;
  }

  int event_fd() const noexcept override { return channel_->ends[side_].event.get(); }
  bool connected() const noexcept override {
    std::lock_guard lock(channel_->mutex);
    return !channel_->ends[side_].gone;
  }
  const Error& error() const noexcept override {
    std::lock_guard lock(channel_->mutex);
    return channel_->ends[side_].error;
  }
  const std::string& peer_address() const noexcept override { return peer_; }
  void close() noexcept override {
    std::lock_guard lock(channel_->mutex);
    end_locked(side_, Error{Errc::kAborted, "the link to " + peer_ + " was closed by this side"});
    end_locked(1 - side_, Error{Errc::kUnavailable, "the peer closed the link"});
  }
  void accept_writes() noexcept override {
    std::lock_guard lock(channel_->mutex);
    channel_->ends[side_].writes_accepted = true;
  }

 private:
  void push_done(End& self, LinkCompletion::Kind kind, std::uint64_t context, bool flushed) {
    Entry done;
    done.completion.kind = kind;
    done.completion.context = context;
    done.completion.flushed = flushed;
    self.queue.push_back(std::move(done));
    signal(self);
  }

  void end_locked(int side, Error why) {
    End& end = channel_->ends[side];
    if (end.gone) return;
    end.gone = true;
    end.error = std::move(why);
    Entry gone;
    gone.completion.kind = LinkCompletion::Kind::kPeerGone;
    end.queue.push_back(std::move(gone));
    signal(end);
  }

  std::shared_ptr<Channel> channel_;
  int side_;
  std::string peer_;
  std::size_t outstanding_ = 0;  // this thread's only
  std::vector<Entry> handed_;
};

struct Backlog {
  std::mutex mutex;
  std::deque<std::unique_ptr<Link>> links;
  UniqueFd event{::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
  std::shared_ptr<RegionTable> regions;  // the listening transport's
};

}  // namespace

class LoopbackNetwork {
 public:
  std::mutex mutex;
  std::map<std::string, std::weak_ptr<Backlog>, std::less<>> listeners;
  std::uint64_t next_name = 1;
};

namespace {

class LoopbackListener final : public LinkListener {
 public:
  LoopbackListener(std::shared_ptr<LoopbackNetwork> network, std::shared_ptr<Backlog> backlog, std::string address)
      : network_(std::move(network)), backlog_(std::move(backlog)), address_(std::move(address)) {}
  ~LoopbackListener() override {
    std::lock_guard lock(network_->mutex);
    network_->listeners.erase(address_);
  }
  Result<std::unique_ptr<Link>> accept() override {
    std::lock_guard lock(backlog_->mutex);
    if (backlog_->links.empty()) {
      std::uint64_t count = 0;
      [[maybe_unused]] const ssize_t r = ::read(backlog_->event.get(), &count, sizeof count);
      return Error{Errc::kUnavailable, "no peer is waiting"};
    }
    std::unique_ptr<Link> link = std::move(backlog_->links.front());
    backlog_->links.pop_front();
    return link;
  }
  int event_fd() const noexcept override { return backlog_->event.get(); }
  const std::string& address() const noexcept override { return address_; }

 private:
  std::shared_ptr<LoopbackNetwork> network_;
  std::shared_ptr<Backlog> backlog_;
  std::string address_;
};

class LoopbackTransport final : public Transport {
 public:
  explicit LoopbackTransport(std::shared_ptr<LoopbackNetwork> network)
      : network_(std::move(network)), regions_(std::make_shared<RegionTable>()) {}

  std::string_view name() const noexcept override { return "loopback"; }
  Result<LocalRegion> register_region(std::span<std::byte> bytes) override { return regions_->add(bytes); }
  Result<void> deregister_region(std::uint32_t key) override { return regions_->remove(key); }

  Result<std::unique_ptr<LinkListener>> listen(std::string_view address) override {
    std::lock_guard lock(network_->mutex);
    std::string name(address);
    if (name.empty()) name = "loopback-" + std::to_string(network_->next_name++);
    if (auto found = network_->listeners.find(name); found != network_->listeners.end() && !found->second.expired()) {
      return Error{Errc::kIo, "link listen address " + name + " is in use"};
    }
    auto backlog = std::make_shared<Backlog>();
    backlog->regions = regions_;
    network_->listeners[name] = backlog;
    return std::unique_ptr<LinkListener>(new LoopbackListener(network_, std::move(backlog), name));
  }

  Result<std::unique_ptr<Link>> connect(std::string_view address, int /*timeout_ms*/) override {
    std::shared_ptr<Backlog> backlog;
    {
      std::lock_guard lock(network_->mutex);
      auto found = network_->listeners.find(address);
      if (found != network_->listeners.end()) backlog = found->second.lock();
    }
    if (backlog == nullptr) return Error{Errc::kUnavailable, "link connect to " + std::string(address) + ": nothing listens there"};
    auto channel = std::make_shared<Channel>();
    channel->ends[0].regions = regions_;           // the connecting side receives into its own regions
    channel->ends[1].regions = backlog->regions;  // the accepting side into the listener's
    const std::string here = "loopback-peer-" + std::to_string(reinterpret_cast<std::uintptr_t>(channel.get()));
    auto accepted = std::make_unique<LoopbackLink>(channel, 1, here);
    auto connected = std::make_unique<LoopbackLink>(channel, 0, std::string(address));
    {
      std::lock_guard lock(backlog->mutex);
      backlog->links.push_back(std::move(accepted));
      signal_event(backlog->event.get());
    }
    return std::unique_ptr<Link>(std::move(connected));
  }

 private:
  static void signal_event(int fd) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(fd, &one, sizeof one);
  }
  std::shared_ptr<LoopbackNetwork> network_;
  std::shared_ptr<RegionTable> regions_;
};

}  // namespace

std::shared_ptr<LoopbackNetwork> make_loopback_network() { return std::make_shared<LoopbackNetwork>(); }

std::unique_ptr<Transport> make_loopback_transport(std::shared_ptr<LoopbackNetwork> network) {
  return std::make_unique<LoopbackTransport>(std::move(network));
}

}  // namespace weft

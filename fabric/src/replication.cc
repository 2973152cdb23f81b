#include "weft/fabric/replication.h"

#include <poll.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <optional>

#include "weft/fabric/hmac_sha256.h"
#include "weft/fabric/log.h"
#include "weft/fabric/record_batch.h"
#include "weft/fabric/ring.h"
#include "weft/fabric/thread_name.h"

namespace weft {

// ---- EpochHistory ----------------------------------------------------------------------------

void EpochHistory::assign(std::int32_t epoch, Offset start) { (void)add_epoch(entries_, EpochStart{epoch, start}); }

std::pair<std::int32_t, Offset> EpochHistory::end_of(std::int32_t epoch, Offset log_end) const noexcept {
  for (std::size_t i = entries_.size(); i-- > 0;) {
    if (entries_[i].epoch > epoch) continue;
    const Offset end = i + 1 < entries_.size() ? entries_[i + 1].start : log_end;
    return {entries_[i].epoch, end};
  }
  return {-1, entries_.empty() ? log_end : entries_.front().start};
}

void EpochHistory::truncate_to(Offset end) {
  while (!entries_.empty() && entries_.back().start >= end) entries_.pop_back();
}

bool EpochHistory::restore(std::vector<Entry> entries, Offset log_end) {
  for (std::size_t i = 1; i < entries.size(); ++i)
    if (entries[i].epoch <= entries[i - 1].epoch || entries[i].start < entries[i - 1].start) return false;
  for (const Entry& e : entries)
    if (e.epoch < 0 || e.start < Offset{0}) return false;
  entries_ = std::move(entries);
  // An epoch that starts at or past the log's end holds nothing here (Kafka's truncateFromEnd):
  // the log lost that tail in a crash, or the node led it without a batch.
  truncate_to(log_end);
  return true;
}

// ---- a follower's landing region ------------------------------------------------------------

namespace {

// Heap memory left uninitialised: a page costs its fault only once a write lands on it. Zeroing
// the 8 MiB of each followed partition's region cost ~10 ms of page faults (~4 µs a page on
// this VM) on the replication thread per new role, while every other partition waited; the
// follower reads only the bytes a completed write put there.
struct LandingRegion {
  std::unique_ptr<std::byte[]> bytes;
  std::size_t size = 0;

  static LandingRegion of(std::size_t size) { return LandingRegion{std::make_unique_for_overwrite<std::byte[]>(size), size}; }
  std::byte* data() const noexcept { return bytes.get(); }
  std::span<std::byte> span() const noexcept { return {bytes.get(), size}; }
};

}  // namespace

// ---- the wire: control messages --------------------------------------------------------------

namespace {

enum class MessageType : std::uint8_t {
  kFollow = 1,     // follower -> leader: where my log ends, and my landing region
  kProgress = 2,   // follower -> leader: my log end, durable end, region bytes freed
  kAccepted = 3,   // leader -> follower: writes follow
  kDiverging = 4,  // leader -> follower: truncate to where your last epoch ends here
  kRefused = 5,    // leader -> follower: not now (not the leader, another epoch, ...)
  kHighWatermark = 6,
  kOutOfRange = 7,  // leader -> follower: I no longer hold your log end; start again at my log start
  kUnfollow = 8,    // follower -> leader: stop pushing this stream
  // The handshake that opens every link (ReplicationOptions::secret), before anything else:
  kChallenge = 9,  // leader -> follower, on accepting: a nonce
  kHello = 10,     // follower -> leader: its node id, a nonce, proof over both nonces and its id
  kWelcome = 11,   // leader -> follower: the leader's id and its proof over both nonces
  // leader -> follower, the answer to kUnfollow: no write of that stream comes after it (a link
  // delivers in order), so its landing region may go.
  kUnfollowed = 12,
};

using Nonce = std::array<std::byte, 16>;

// From the kernel's random source (a guessable nonce would let a recorded proof be replayed):
// nothing when it does not answer, and the link is not opened.
std::optional<Nonce> fresh_nonce() {
  Nonce n{};
  for (int attempt = 0; attempt < 8; ++attempt) {
    const ssize_t got = ::getrandom(n.data(), n.size(), 0);
    if (got == static_cast<ssize_t>(n.size())) return n;
    if (got >= 0 || errno != EINTR) break;
  }
  return std::nullopt;
}

constexpr std::string_view kHelloLabel = "weft follower";
constexpr std::string_view kWelcomeLabel = "weft leader";
constexpr std::size_t kProofInputBytes = 64;
static_assert(std::max(kHelloLabel.size(), kWelcomeLabel.size()) + 2 * sizeof(Nonce) + sizeof(NodeId) <= kProofInputBytes);

// HMAC-SHA-256 under the cluster's secret of a label and the fields, so neither side's proof can
// be replayed as the other's (the labels differ) or on another link (the nonces do).
Sha256Digest handshake_proof(std::string_view secret, std::string_view label, const Nonce& first, const Nonce& second, NodeId node) {
  std::array<std::byte, kProofInputBytes> message{};
  std::size_t at = 0;
  const auto put = [&](const void* bytes, std::size_t n) {
    std::memcpy(message.data() + at, bytes, n);
    at += n;
  };
  put(label.data(), label.size());
  put(first.data(), first.size());
  put(second.data(), second.size());
  put(&node, sizeof node);
  return hmac_sha256(std::as_bytes(std::span(secret.data(), secret.size())), std::span(message.data(), at));
}

// Little-endian fixed layouts, appended and read with memcpy (both ends run the same build).
class MessageWriter {
 public:
  template <class T>
  MessageWriter& put(T value) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (size_ + sizeof(T) <= bytes_.size()) std::memcpy(bytes_.data() + size_, &value, sizeof(T));
    size_ += sizeof(T);
    return *this;
  }
  MessageWriter& put_string(std::string_view s) {
    put(static_cast<std::uint16_t>(s.size()));
    if (size_ + s.size() <= bytes_.size()) std::memcpy(bytes_.data() + size_, s.data(), s.size());
    size_ += s.size();
    return *this;
  }
  bool fits() const noexcept { return size_ <= bytes_.size(); }
  std::span<const std::byte> bytes() const noexcept { return std::span(bytes_.data(), std::min(size_, bytes_.size())); }

 private:
  std::array<std::byte, kLinkMaxMessageBytes> bytes_{};
  std::size_t size_ = 0;
};

class MessageReader {
 public:
  explicit MessageReader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  template <class T>
  T get() {
    T value{};
    if (at_ + sizeof(T) <= bytes_.size()) {
      std::memcpy(&value, bytes_.data() + at_, sizeof(T));
    } else {
      failed_ = true;
    }
    at_ += sizeof(T);
    return value;
  }
  std::string get_string() {
    const auto n = get<std::uint16_t>();
    if (failed_ || at_ + n > bytes_.size()) {
      failed_ = true;
      return {};
    }
    std::string s(reinterpret_cast<const char*>(bytes_.data() + at_), n);
    at_ += n;
    return s;
  }
  bool failed() const noexcept { return failed_; }

 private:
  std::span<const std::byte> bytes_;
  std::size_t at_ = 0;
  bool failed_ = false;
};

// A write's immediate: the follower's stream id, and this bit when the write starts the region
// again (the tail after the previous write was skipped).
constexpr std::uint32_t kWrapBit = 1u << 16;

std::int64_t now_ms() noexcept { return monotonic_ns() / 1'000'000; }

bool contains(const std::vector<NodeId>& ids, NodeId id) { return std::find(ids.begin(), ids.end(), id) != ids.end(); }

}  // namespace

std::string to_string(const PartitionId& p) { return p.topic + "/" + std::to_string(p.partition); }

// ---- the replicator --------------------------------------------------------------------------

struct Replicator::Impl {
  using Buffer = std::unique_ptr<std::vector<std::byte>>;

  struct Connection;

  // The leader's side of one follower's stream, on the link the follower opened.
  struct LeaderStream {
    PartitionId partition;
    NodeId follower = -1;
    RegionDescriptor region;
    Offset next_offset{0};          // the next offset to push
    std::uint64_t head = 0;         // where the next write starts in the region
    std::uint64_t written = 0;      // region bytes used so far, skipped tails included
    std::uint64_t consumed = 0;     // region bytes the follower has freed
    std::vector<Buffer> free_buffers;
    bool hw_due = false;
    std::int64_t hw_due_ns = 0;  // sent alone from then on; before, only ahead of a write
    bool stuck_reported = false;
    Offset hw_sent{-1};
  };

  struct Connection {
    std::unique_ptr<Link> link;
    bool outgoing = false;
    // poll() the link: its event fd was readable in the last wait, or something was posted on it
    // since (its completions wait in the link), or the thread did not wait. A poll of an idle TCP
    // link is a recv that fails, and a leader's thread woke for one follower polled them all.
    bool poll_due = true;
    std::string address;          // outgoing: the leader's address
    std::int64_t retry_at_ms = 0;  // outgoing and down: when to connect again
    // outgoing: a connect under way on its own thread, so a leader that does not answer (a cut
    // link: SYNs unanswered until connect_timeout_ms) stalls no other partition's replication
    std::future<Result<std::unique_ptr<Link>>> connecting;
    std::map<std::uint16_t, LeaderStream> streams;  // incoming: the followers' streams
    // The handshake: nothing but its messages crosses the link until it is done. Reset with
    // every new link (begin_handshake), so nothing of an earlier one is taken on the next.
    bool authenticated = false;
    bool awaiting_welcome = false;  // outgoing: the hello is sent; only a welcome may come
    Nonce nonce{};       // ours: the leader's challenge, or the follower's hello
    Nonce peer_nonce{};  // outgoing: the leader's challenge, for its welcome's proof
    std::int64_t handshake_deadline_ms = 0;
    NodeId peer = -1;  // incoming: the node the follower proved to be
    int handshake_failures = 0;  // outgoing: in a row, each doubling the wait before the next connect
    bool end_handled = false;    // on_link_gone ran for this link (once a link, polled or not)
    void begin_handshake(std::int64_t deadline_ms) {
      end_handled = false;
      authenticated = false;
      awaiting_welcome = false;
      nonce = {};
      peer_nonce = {};
      peer = -1;
      handshake_deadline_ms = deadline_ms;
    }
    // Writes posted and not yet completed, in posting order (a link completes them in order):
    // their stream and buffer, which must live until the link is done reading it.
    struct InFlight {
      std::uint16_t stream;
      Buffer buffer;
      PushHold hold;  // ring bytes the write points at
    };
    std::deque<InFlight> in_flight;
    // Control messages the link's full queue did not take (a follower reading slower than its
    // leader pushes keeps it full): sent first, in order, before any write; a reply dropped there
    // left its follower waiting for good. Only for this link: a new one starts empty.
    std::deque<std::vector<std::byte>> unsent;
    // Landing regions of partitions no longer followed through this link: a write may still be
    // landing in them, so they stay registered and allocated until the leader answers the
    // stream's kUnfollow (or the link is gone).
    struct Retired {
      std::uint32_t key = 0;
      LandingRegion bytes;
      std::uint16_t stream = 0;
    };
    std::vector<Retired> retired;
    bool up() const noexcept { return link != nullptr && link->connected(); }
    // The link goes first: nothing may read the in-flight writes' buffers or held ring bytes
    // after they are let go.
    ~Connection() { link.reset(); }
  };

  // Frees the retired regions of a connection whose link is closed (or about to be replaced).
  void release_retired(Connection& c) {
    for (Connection::Retired& r : c.retired) (void)transport.deregister_region(r.key);
    c.retired.clear();
  }

  struct FollowerState {
    Offset log_end{0};
    Offset durable_end{0};
    std::int64_t last_caught_up_ms = 0;
    Offset leader_end_at_last_report{0};
    std::int64_t last_report_ms = 0;
    Connection* connection = nullptr;  // where its stream is (nullptr: not connected)
    std::uint16_t stream = 0;
  };

  struct Led {
    ReplicaLog* log = nullptr;
    std::int32_t epoch = 0;
    Offset epoch_start{0};
    std::vector<NodeId> replicas;
    std::vector<NodeId> isr;
    Offset hw{0};
    std::map<NodeId, FollowerState> followers;
    bool proposal_pending = false;
    std::vector<NodeId> proposed_additions;  // members a pending proposal adds
    std::uint64_t proposal_sequence = 0;      // the last proposal's
    std::int64_t isr_revision = -1;           // the metadata's revision of the set applied (-1: unknown)
    std::int64_t settled_from = -1;           // states from this revision on answer the pending proposal
    // The proposal is answered: nothing of it counts any more, and another may follow.
    void settle() {
      proposal_pending = false;
      proposed_additions.clear();
      settled_from = -1;
    }
  };

  enum class FollowState : std::uint8_t { kNeedFollow, kAwaitAccept, kStreaming, kBackoff };

  struct Followed {
    ReplicaLog* log = nullptr;
    std::int32_t epoch = 0;
    NodeId leader = -1;
    std::string address;
    std::uint16_t stream = 0;
    FollowState state = FollowState::kNeedFollow;
    std::string why;  // the last refusal or failure
    std::int64_t retry_at_ms = 0;
    LandingRegion region;
    RegionDescriptor descriptor;
    std::uint64_t position = 0;  // where the leader's next write lands
    std::uint64_t consumed = 0;
    Offset hw{0};
    Offset reported_end{-1};
    Offset reported_durable{-1};
    bool progress_due = false;
    // Writes landed and not yet wholly appended (the log had no room): what is left of each, and
    // the region bytes it frees once taken.
    struct Pending {
      std::span<const std::byte> bytes;
      std::uint32_t region_bytes = 0;
    };
    std::deque<Pending> pending;
  };

  Transport& transport;
  NodeId self;
  ReplicationOptions options;
  std::unique_ptr<LinkListener> listener;
  std::string address;
  std::vector<std::unique_ptr<Connection>> incoming;
  std::map<std::string, std::unique_ptr<Connection>> outgoing;
  std::map<PartitionId, Led> led;
  std::map<PartitionId, Followed> followed;
  std::map<std::uint16_t, PartitionId> followed_by_stream;
  std::uint16_t next_stream = 1;
  std::vector<IsrProposal> proposals;
  std::uint64_t proposal_sequences = 0;
  std::int64_t last_lag_check_ms = 0;

  Impl(Transport& t, NodeId id, ReplicationOptions o) : transport(t), self(id), options(o) {}

  // -- sending --

  // More control messages than this waiting on one link: its peer reads nothing, and the link ends.
  static constexpr std::size_t kMaxUnsentMessages = 65'536;

  // Sends now, or after what waits for the link's queue; false when the link is down.
  static bool send(Connection& c, const MessageWriter& m) {
    if (!c.up()) return false;
    c.poll_due = true;
    if (c.unsent.empty()) {
      const PostStatus posted = c.link->post_send(m.bytes(), 0);
      if (posted != PostStatus::kQueueFull) return posted == PostStatus::kOk;
    }
    if (c.unsent.size() >= kMaxUnsentMessages) {
      c.link->close();
      return false;
    }
    c.unsent.emplace_back(m.bytes().begin(), m.bytes().end());
    return true;
  }

  // Posts the waiting control messages, in order; true when none waits.
  static bool send_unsent(Connection& c) {
    while (!c.unsent.empty() && c.up()) {
      if (c.link->post_send(c.unsent.front(), 0) != PostStatus::kOk) return false;
      c.unsent.pop_front();
      c.poll_due = true;
    }
    return c.unsent.empty();
  }

  void refuse(Connection& c, std::uint16_t stream, MessageType type, std::int32_t epoch, std::int64_t offset, std::string_view why) {
    MessageWriter m;
    m.put(static_cast<std::uint8_t>(type)).put(stream).put(epoch).put(offset).put_string(why.substr(0, 200));
    send(c, m);
  }

  // -- the leader's side --

  void on_follow(Connection& c, MessageReader& r) {
    const auto stream = r.get<std::uint16_t>();
    const auto follower = r.get<NodeId>();
    const auto epoch = r.get<std::int32_t>();
    const auto partition_index = r.get<std::uint32_t>();
    const Offset fetch_offset{r.get<std::int64_t>()};
    const auto last_epoch = r.get<std::int32_t>();
    const auto region = r.get<RegionDescriptor>();
    const PartitionId partition{r.get_string(), partition_index};
    if (r.failed()) {
      log(LogLevel::kWarn, "replication: a malformed follow request; the link is closed", {{"peer", c.link->peer_address()}});
      c.link->close();
      return;
    }
    if (follower != c.peer) {
      log(LogLevel::kWarn, "replication: a follow request for another node than the link's; the link is closed",
          {{"peer", c.link->peer_address()}, {"proved", std::to_string(c.peer)}, {"claimed", std::to_string(follower)}});
      c.link->close();
      return;
    }
    c.streams.erase(stream);
    auto found = led.find(partition);
    if (found == led.end()) {
      refuse(c, stream, MessageType::kRefused, -1, -1, "node " + std::to_string(self) + " does not lead " + to_string(partition));
      return;
    }
    Led& l = found->second;
    if (epoch != l.epoch) {
      refuse(c, stream, MessageType::kRefused, l.epoch, -1,
             "leader epoch " + std::to_string(epoch) + " is not the current " + std::to_string(l.epoch));
      return;
    }
    if (!contains(l.replicas, follower) || follower == self) {
      refuse(c, stream, MessageType::kRefused, l.epoch, -1, "node " + std::to_string(follower) + " is not a replica of " + to_string(partition));
      return;
    }
    if (region.length < options.max_write_bytes || region.key == 0) {
      refuse(c, stream, MessageType::kRefused, l.epoch, -1, "the landing region is smaller than one write");
      return;
    }
    const Offset log_end = l.log->log_end();
    if (fetch_offset < l.log->log_start()) {
      refuse(c, stream, MessageType::kOutOfRange, l.epoch, l.log->log_start().value, "the leader's log starts later");
      return;
    }
    // Kafka's divergence rule: the follower's last epoch must end here no earlier than its log.
    if (last_epoch >= 0 || fetch_offset > log_end) {
      const auto [known_epoch, end] = l.log->epochs().end_of(last_epoch < 0 ? l.epoch : last_epoch, log_end);
      if (known_epoch != last_epoch || end < fetch_offset) {
        const Offset truncate_to = std::min(end, fetch_offset);
        refuse(c, stream, MessageType::kDiverging, known_epoch, truncate_to.value, "diverging");
        return;
      }
    }
    LeaderStream s;
    s.partition = partition;
    s.follower = follower;
    s.region = region;
    s.next_offset = fetch_offset;
    for (std::size_t i = 0; i < options.writes_in_flight; ++i) {
      s.free_buffers.push_back(std::make_unique<std::vector<std::byte>>(options.max_write_bytes));
    }
    c.streams[stream] = std::move(s);
    FollowerState& f = l.followers[follower];
    // One stream per follower of a partition: a follow again (on any connection, under any stream
    // id) replaces the last, so no peer can pile up streams and their buffers.
    if (f.connection != nullptr && (f.connection != &c || f.stream != stream)) f.connection->streams.erase(f.stream);
    f.connection = &c;
    f.stream = stream;
    f.log_end = fetch_offset;
    MessageWriter m;
    m.put(static_cast<std::uint8_t>(MessageType::kAccepted)).put(stream).put(l.epoch).put(l.hw.value);
    send(c, m);
    c.streams[stream].hw_sent = l.hw;
  }

  void on_progress(Connection& c, MessageReader& r) {
    const auto stream = r.get<std::uint16_t>();
    Offset log_end{r.get<std::int64_t>()};
    Offset durable{r.get<std::int64_t>()};
    const auto consumed = r.get<std::uint64_t>();
    auto s = c.streams.find(stream);
    if (r.failed() || s == c.streams.end()) return;
    s->second.consumed = std::max(s->second.consumed, consumed);
    auto l = led.find(s->second.partition);
    if (l == led.end()) return;
    FollowerState& f = l->second.followers[s->second.follower];
    // A follower holds at most what was sent to it: a report past that (a bug, or a peer that is
    // not what it says) must not move the high watermark over records it does not have.
    log_end = std::min(log_end, s->second.next_offset);
    durable = std::min(durable, log_end);
    const std::int64_t now = now_ms();
    const Offset leader_end = l->second.log->log_end();
    // Kafka's rule: caught up now if at the leader's end; else caught up as of the previous
    // report if it has reached the end the leader had then.
    if (log_end >= leader_end) {
      f.last_caught_up_ms = now;
    } else if (log_end >= f.leader_end_at_last_report && f.last_report_ms > 0) {
      f.last_caught_up_ms = std::max(f.last_caught_up_ms, f.last_report_ms);
    }
    f.leader_end_at_last_report = leader_end;
    f.last_report_ms = now;
    f.log_end = log_end;
    f.durable_end = std::max(f.durable_end, durable);
    update_hw(s->second.partition, l->second);
  }

  void update_hw(const PartitionId& partition, Led& l) {
    Offset hw = l.log->durable_end();
    // The committed set, and while an expansion is proposed, the members it would add (Kafka's
    // "maximal" in-sync set, KIP-497): a replica the metadata may already hold in the set, and
    // could elect, is never behind the high watermark.
    auto counts = [&](NodeId id) {
      if (id == self) return;
      auto f = l.followers.find(id);
      hw = std::min(hw, f == l.followers.end() ? l.hw : f->second.durable_end);
    };
    for (NodeId id : l.isr) counts(id);
    for (NodeId id : l.proposed_additions) counts(id);
    if (hw <= l.hw) return;
    l.hw = hw;
    l.log->publish_high_watermark(hw);
    for (auto& [id, f] : l.followers) {
      if (f.connection == nullptr) continue;
      auto s = f.connection->streams.find(f.stream);
      if (s == f.connection->streams.end() || s->second.partition != partition || s->second.hw_due) continue;
      s->second.hw_due = true;
      s->second.hw_due_ns = monotonic_ns() + kHighWatermarkDelayNs;
      next_hw_due_ns = std::min(next_hw_due_ns, s->second.hw_due_ns);
    }
  }

  // A follower learns the high watermark ahead of the next write to it, or alone once this has
  // passed: a message of its own per record woke each follower twice per record. Its own
  // consumers see records up to this much later when the stream goes quiet; Kafka's followers
  // learn it a fetch later.
  static constexpr std::int64_t kHighWatermarkDelayNs = 1'000'000;
  std::int64_t next_hw_due_ns = INT64_MAX;  // the earliest hw_due_ns of any stream: the wait ends then

  // Pushes what the log holds past each stream's position, while the region has room.
  bool push(Connection& c) {
    bool any = false;
    if (!c.unsent.empty() && !send_unsent(c)) return false;  // the queue is still full: nothing goes before them
    for (auto& entry : c.streams) {
      // Named, not structured bindings: the lambda below captures them (clang 14 cannot).
      const std::uint16_t id = entry.first;
      LeaderStream& s = entry.second;
      auto l = led.find(s.partition);
      if (l == led.end()) continue;
      ReplicaLog& log_ = *l->second.log;
      if (s.hw_due && s.hw_sent == l->second.hw) s.hw_due = false;
      const bool write_ready = !s.free_buffers.empty() && s.next_offset < log_.log_end();
      if (s.hw_due && (write_ready || monotonic_ns() >= s.hw_due_ns)) {
        MessageWriter m;
        m.put(static_cast<std::uint8_t>(MessageType::kHighWatermark)).put(id).put(l->second.hw.value);
        if (send(c, m)) {
          s.hw_sent = l->second.hw;
          s.hw_due = false;
        }
      }
      if (s.hw_due) next_hw_due_ns = std::min(next_hw_due_ns, s.hw_due_ns);
      while (!s.free_buffers.empty() && s.next_offset < log_.log_end()) {
        const std::uint64_t size = s.region.length;
        const std::uint64_t free = size - (s.written - s.consumed);
        Buffer& buffer = s.free_buffers.back();
        // Whole batches go at the head while they fit before the region's end; when the next
        // one does not, the tail is skipped and the write starts the region again (the wrap bit
        // of the immediate tells the follower so).
        std::uint64_t skip = 0;
        bool too_big = false;  // the next batch needs more room than was offered
        // The write's gather list: large batches in place in the leader's ring (held from reuse
        // until the write completes), the rest copied into the buffer.
        std::array<std::span<const std::byte>, kLinkMaxGather> pieces;
        PushHold hold;
        auto read_into = [&](std::uint64_t room) -> Result<PushRead> {
          hold.release();
          if (room == 0) return PushRead{0, 0, s.next_offset};
          Result<PushRead> got = log_.read_for_push(s.next_offset, std::span(buffer->data(), room), pieces, hold);
          if (!got.ok() && got.error().code == Errc::kResourceExhausted) {
            too_big = true;
            return PushRead{0, 0, s.next_offset};
          }
          return got;
        };
        const std::uint64_t at_head = std::min<std::uint64_t>({options.max_write_bytes, free, size - s.head});
        Result<PushRead> read = read_into(at_head);
        // Wrap when the next batch does not fit before the end — or nothing does (a write ended
        // exactly at the end: skip is then 0, and the wrap bit still says "from the start").
        bool wrapped = false;
        if (read.ok() && read->bytes == 0 && (too_big || s.head == size) && s.head != 0 && free >= size - s.head) {
          skip = size - s.head;
          wrapped = true;
          too_big = false;
          read = read_into(std::min<std::uint64_t>(options.max_write_bytes, free - skip));
        }
        if (!read.ok()) {
          log(LogLevel::kWarn, "replication: the leader cannot read its log; the follower's stream stops",
              {{"partition", to_string(s.partition)}, {"error", read.error().message}});
          c.link->close();
          return any;
        }
        if (read->bytes == 0) {
          if (too_big && free == size && !s.stuck_reported) {
            log(LogLevel::kError, "replication: a batch is larger than one replication write (max_write_bytes); the stream waits",
                {{"partition", to_string(s.partition)}, {"offset", std::to_string(s.next_offset.value)}});
            s.stuck_reported = true;
          }
          break;  // nothing new yet, or the next batch needs more room than the follower has freed
        }
        const std::uint64_t start = wrapped ? 0 : s.head;
        const std::uint32_t immediate = id | (wrapped ? kWrapBit : 0u);
        c.poll_due = true;
        if (!c.unsent.empty()) break;  // a message queued above goes first
        const PostStatus posted = c.link->post_write(s.region, start, std::span(pieces.data(), read->pieces), immediate, id);
        if (posted != PostStatus::kOk) break;  // a full queue: the next round; a dead link: its end is polled
        c.in_flight.push_back(Connection::InFlight{id, std::move(buffer), std::move(hold)});
        s.free_buffers.pop_back();
        s.written += skip + read->bytes;
        s.head = start + read->bytes;
        s.next_offset = read->next;
        any = true;
      }
    }
    return any;
  }

  void on_write_done(Connection& c) {
    if (c.in_flight.empty()) return;
    Connection::InFlight done = std::move(c.in_flight.front());
    c.in_flight.pop_front();
    auto s = c.streams.find(done.stream);
    if (s == c.streams.end()) return;  // the stream ended: the buffer goes
    s->second.free_buffers.push_back(std::move(done.buffer));
  }

  void check_lag() {
    const std::int64_t now = now_ms();
    for (auto& [partition, l] : led) {
      const Offset leader_end = l.log->log_end();
      for (auto& [id, f] : l.followers) {
        if (f.connection != nullptr && f.log_end >= leader_end) f.last_caught_up_ms = now;
      }
      if (l.proposal_pending) continue;
      std::vector<NodeId> isr = l.isr;
      std::string reason;
      for (NodeId id : l.isr) {
        if (id == self) continue;
        const FollowerState& f = l.followers[id];
        if (now - f.last_caught_up_ms > options.replica_lag_max_ms) {
          isr.erase(std::find(isr.begin(), isr.end(), id));
          reason += "node " + std::to_string(id) + " has not caught up for " + std::to_string(now - f.last_caught_up_ms) + " ms; ";
        }
      }
      for (auto& [id, f] : l.followers) {
        if (contains(isr, id) || f.connection == nullptr || !contains(l.replicas, id)) continue;
        // Kafka's rule (at the high watermark and past this epoch's start), and caught up
        // lately: a follower just proposed out is not proposed back in the same breath.
        if (f.log_end >= l.hw && f.log_end >= l.epoch_start && f.durable_end >= l.hw &&
            now - f.last_caught_up_ms <= options.replica_lag_max_ms) {
          isr.push_back(id);
          reason += "node " + std::to_string(id) + " caught up; ";
        }
      }
      if (isr != l.isr) {
        std::sort(isr.begin(), isr.end());
        l.proposed_additions.clear();
        for (NodeId id : isr) {
          if (!contains(l.isr, id)) l.proposed_additions.push_back(id);
        }
        // Numbered across the replicator: a partition led anew at the same epoch (its topic made
        // again) must not take an answer meant for its last leadership's proposal.
        l.proposal_sequence = ++proposal_sequences;
        proposals.push_back(IsrProposal{partition, l.epoch, isr, reason, l.isr, l.proposal_sequence});
        l.proposal_pending = true;
        l.settled_from = -1;
      }
    }
  }

  // -- the follower's side --

  Connection& connection_to(const std::string& leader_address) {
    auto& c = outgoing[leader_address];
    if (c == nullptr) {
      c = std::make_unique<Connection>();
      c->outgoing = true;
      c->address = leader_address;
    }
    return *c;
  }

  void send_follow(Connection& c, Followed& f, const PartitionId& partition) {
    MessageWriter m;
    m.put(static_cast<std::uint8_t>(MessageType::kFollow))
        .put(f.stream)
        .put(self)
        .put(f.epoch)
        .put(partition.partition)
        .put(f.log->log_end().value)
        .put(f.log->epochs().last_epoch())
        .put(f.descriptor)
        .put_string(partition.topic);
    if (send(c, m)) {
      f.state = FollowState::kAwaitAccept;
      f.position = 0;
      f.consumed = 0;
      f.pending.clear();
    }
  }

  void send_progress(Connection& c, Followed& f) {
    MessageWriter m;
    const Offset end = f.log->log_end();
    const Offset durable = f.log->durable_end();
    m.put(static_cast<std::uint8_t>(MessageType::kProgress)).put(f.stream).put(end.value).put(durable.value).put(f.consumed);
    if (send(c, m)) {
      f.reported_end = end;
      f.reported_durable = durable;
      f.progress_due = false;
    } else {
      f.progress_due = true;
    }
  }

  void back_off(Followed& f, std::string why) {
    f.state = FollowState::kBackoff;
    f.retry_at_ms = now_ms() + options.retry_backoff_ms;
    f.why = std::move(why);
  }

  // The leader's answer to an unfollow: the stream's oldest retired region on this link goes
  // (a stream id may have been retired twice; the answers come in order).
  void on_unfollowed(Connection& c, MessageReader& r) {
    const auto stream = r.get<std::uint16_t>();
    if (r.failed() || !c.outgoing) return;
    const auto it = std::find_if(c.retired.begin(), c.retired.end(), [&](const Connection::Retired& x) { return x.stream == stream; });
    if (it == c.retired.end()) return;
    (void)transport.deregister_region(it->key);
    c.retired.erase(it);
  }

  void on_leader_message(Connection& c, MessageType type, MessageReader& r) {
    const auto stream = r.get<std::uint16_t>();
    auto p = followed_by_stream.find(stream);
    if (p == followed_by_stream.end()) return;
    Followed& f = followed[p->second];
    if (f.address != c.address) return;
    switch (type) {
      case MessageType::kAccepted: {
        (void)r.get<std::int32_t>();
        const Offset hw{r.get<std::int64_t>()};
        if (r.failed() || f.state != FollowState::kAwaitAccept) return;
        f.hw = std::max(f.hw, hw);
        f.log->publish_high_watermark(f.hw);
        f.state = FollowState::kStreaming;
        f.why.clear();
        return;
      }
      case MessageType::kHighWatermark: {
        const Offset hw{r.get<std::int64_t>()};
        if (r.failed()) return;
        f.hw = std::max(f.hw, hw);
        f.log->publish_high_watermark(f.hw);
        return;
      }
      case MessageType::kDiverging: {
        const auto epoch = r.get<std::int32_t>();
        const Offset leader_end{r.get<std::int64_t>()};
        // Only the answer to this follow, read whole: a short message would read as epoch 0 at
        // offset 0 and cut the whole log.
        if (r.failed() || f.state != FollowState::kAwaitAccept) return;
        // Truncate to where the epoch ends on both logs, then follow again from there.
        const Offset own_end = f.log->epochs().end_of(epoch, f.log->log_end()).second;
        const Offset to = std::max(f.log->log_start(), std::min(leader_end, own_end));
        log(LogLevel::kInfo, "replication: truncating a divergent suffix",
            {{"partition", to_string(p->second)}, {"from", std::to_string(f.log->log_end().value)}, {"to", std::to_string(to.value)}});
        if (Result<void> cut = f.log->truncate(to); !cut.ok()) {
          back_off(f, "truncation failed: " + cut.error().message);
          return;
        }
        f.log->epochs().truncate_to(to);
        f.hw = std::min(f.hw, to);
        f.state = FollowState::kNeedFollow;
        return;
      }
      case MessageType::kOutOfRange: {
        (void)r.get<std::int32_t>();
        const Offset start{r.get<std::int64_t>()};
        if (r.failed() || f.state != FollowState::kAwaitAccept || start < f.log->log_end()) return;  // a leader's log starts past ours
        if (Result<void> reset = f.log->reset(start); !reset.ok()) {
          back_off(f, "reset failed: " + reset.error().message);
          return;
        }
        f.log->epochs().truncate_to(Offset{0});
        f.state = FollowState::kNeedFollow;
        return;
      }
      case MessageType::kRefused: {
        (void)r.get<std::int32_t>();
        (void)r.get<std::int64_t>();
        back_off(f, "refused: " + r.get_string());
        return;
      }
      default:
        return;
    }
  }

  void on_write_received(Connection& c, const LinkCompletion& done) {
    auto p = followed_by_stream.find(static_cast<std::uint16_t>(done.immediate & 0xffff));
    if (p == followed_by_stream.end()) return;
    Followed& f = followed[p->second];
    if (f.address != c.address || f.state != FollowState::kStreaming) return;
    const std::uint64_t size = f.region.size;
    std::uint64_t start = f.position;
    if ((done.immediate & kWrapBit) != 0) {
      // The skipped tail (maybe empty) frees in order, after whatever still waits before it.
      if (size > start) f.pending.push_back(Followed::Pending{{}, static_cast<std::uint32_t>(size - start)});
      start = 0;
    }
    if (start + done.length > size) {
      log(LogLevel::kError, "replication: a write past the landing region's end; following again", {{"partition", to_string(p->second)}});
      f.state = FollowState::kNeedFollow;
      return;
    }
    std::span<const std::byte> chunk(f.region.data() + start, done.length);
    f.position = start + done.length;
    // Every batch is checked (the CRC too): what lands here is appended and served.
    std::size_t skip = 0;
    const Offset end = f.log->log_end();
    for (std::size_t at = 0; at < chunk.size();) {
      Result<BatchView> batch = BatchView::parse(chunk.subspan(at));
      if (!batch.ok()) {
        log(LogLevel::kError, "replication: a corrupt batch from the leader; following again",
            {{"partition", to_string(p->second)}, {"error", batch.error().message}});
        f.state = FollowState::kNeedFollow;
        return;
      }
      if (batch->last_offset() < end) skip = at + batch->size_bytes();  // already held
      at += batch->size_bytes();
      const std::int32_t epoch = batch->partition_leader_epoch();
      if (epoch > f.log->epochs().last_epoch() && batch->last_offset() >= end) {
        f.log->epochs().assign(epoch, batch->base_offset());
        // Before the batch is appended; synced before the log's recovery point passes the batch.
        f.log->save_epochs(EpochSave::kWithTheLog);
      }
    }
    f.pending.push_back(Followed::Pending{chunk.subspan(skip), done.length});
    take_pending(c, f, p->second);
  }

  // Appends what has landed, oldest first; a log without room keeps the rest for the next
  // round, and the region space stays unfreed (so the leader waits) until it is taken.
  // True when it took anything.
  bool take_pending(Connection& c, Followed& f, const PartitionId& partition) {
    bool took = false;
    while (!f.pending.empty()) {
      Followed::Pending& next = f.pending.front();
      if (!next.bytes.empty()) {
        Result<std::size_t> appended = f.log->append(next.bytes);
        if (!appended.ok()) {
          log(LogLevel::kError, "replication: the follower's log refused batches; following again later",
              {{"partition", to_string(partition)}, {"error", appended.error().message}});
          f.pending.clear();
          back_off(f, "append failed: " + appended.error().message);
          return took;
        }
        took = took || *appended > 0;
        next.bytes = next.bytes.subspan(*appended);
        if (!next.bytes.empty()) break;
      }
      f.consumed += next.region_bytes;
      f.pending.pop_front();
      took = true;
    }
    if (took) send_progress(c, f);
    return took;
  }

  // -- links --

  void handle(Connection& c, const LinkCompletion& done) {
    switch (done.kind) {
      case LinkCompletion::Kind::kWriteDone:
        on_write_done(c);
        return;
      case LinkCompletion::Kind::kSendDone:
        return;
      case LinkCompletion::Kind::kWriteReceived:
        if (!c.authenticated) return handshake_failed(c, "a write before the handshake");
        on_write_received(c, done);
        return;
      case LinkCompletion::Kind::kMessageReceived: {
        MessageReader r(done.message);
        const auto type = static_cast<MessageType>(r.get<std::uint8_t>());
        if (!c.authenticated) return on_handshake_message(c, type, r);
        if (type == MessageType::kFollow) {
          on_follow(c, r);
        } else if (type == MessageType::kProgress) {
          on_progress(c, r);
        } else if (type == MessageType::kUnfollow) {
          const auto stream = r.get<std::uint16_t>();
          if (r.failed()) return;
          c.streams.erase(stream);
          MessageWriter m;
          m.put(static_cast<std::uint8_t>(MessageType::kUnfollowed)).put(stream);
          send(c, m);
        } else if (type == MessageType::kUnfollowed) {
          on_unfollowed(c, r);
        } else {
          on_leader_message(c, type, r);
        }
        return;
      }
      case LinkCompletion::Kind::kPeerGone:
        on_link_gone(c);
        return;
    }
  }

  // -- the handshake --

  // Leader: a link just accepted is challenged at once.
  void challenge(Connection& c) {
    c.begin_handshake(now_ms() + options.handshake_timeout_ms);
    const std::optional<Nonce> nonce = fresh_nonce();
    if (!nonce) return handshake_failed(c, "no random nonce (getrandom failed)");
    c.nonce = *nonce;
    MessageWriter m;
    m.put(static_cast<std::uint8_t>(MessageType::kChallenge)).put(c.nonce);
    if (!send(c, m)) handshake_failed(c, "the challenge could not be sent");
  }

  void on_handshake_message(Connection& c, MessageType type, MessageReader& r) {
    if (!c.outgoing && type == MessageType::kHello) {
      const auto node = r.get<NodeId>();
      const auto nonce = r.get<Nonce>();
      const auto proof = r.get<Sha256Digest>();
      if (r.failed()) return handshake_failed(c, "a hello cut short");
      if (node == self) return handshake_failed(c, "a peer calling itself this node");
      if (!same_digest(proof, handshake_proof(options.secret, kHelloLabel, c.nonce, nonce, node)))
        return handshake_failed(c, "node " + std::to_string(node) + " did not prove it knows the cluster's replication secret (do both nodes have the same one?)");
      c.authenticated = true;
      c.peer = node;
      MessageWriter m;
      m.put(static_cast<std::uint8_t>(MessageType::kWelcome)).put(self).put(handshake_proof(options.secret, kWelcomeLabel, nonce, c.nonce, self));
      if (!send(c, m)) handshake_failed(c, "the welcome could not be sent");
      return;
    }
    if (c.outgoing && type == MessageType::kChallenge && !c.awaiting_welcome) {
      c.peer_nonce = r.get<Nonce>();
      if (r.failed()) return handshake_failed(c, "a challenge cut short");
      const std::optional<Nonce> nonce = fresh_nonce();
      if (!nonce) return handshake_failed(c, "no random nonce (getrandom failed)");
      c.nonce = *nonce;
      c.awaiting_welcome = true;
      MessageWriter m;
      m.put(static_cast<std::uint8_t>(MessageType::kHello)).put(self).put(c.nonce).put(handshake_proof(options.secret, kHelloLabel, c.peer_nonce, c.nonce, self));
      if (!send(c, m)) handshake_failed(c, "the hello could not be sent");
      return;
    }
    if (c.outgoing && type == MessageType::kWelcome && c.awaiting_welcome) {
      const auto leader = r.get<NodeId>();
      const auto proof = r.get<Sha256Digest>();
      if (r.failed()) return handshake_failed(c, "a welcome cut short");
      if (!same_digest(proof, handshake_proof(options.secret, kWelcomeLabel, c.nonce, c.peer_nonce, leader)))
        return handshake_failed(c, "the leader did not prove it knows the cluster's replication secret (do both nodes have the same one?)");
      for (const auto& [partition, f] : followed)
        if (f.address == c.address && f.leader != leader)
          return handshake_failed(c, "node " + std::to_string(leader) + " answered at the address of node " + std::to_string(f.leader));
      c.authenticated = true;  // the partitions followed through it send their follows next round
      c.handshake_failures = 0;
      c.link->accept_writes();  // before the follows that ask for them
      return;
    }
    handshake_failed(c, "message " + std::to_string(static_cast<int>(type)) + " before the handshake");
  }

  // Ends a link whose handshake failed or timed out; a follower's partitions through it say why.
  void handshake_failed(Connection& c, const std::string& why) {
    if (std::uint64_t held_back = 0; handshake_logs.allow(now_ms(), held_back)) {
      log(LogLevel::kWarn, "replication: a link's handshake failed; it is closed",
          {{"peer", c.link != nullptr ? c.link->peer_address() : c.address}, {"why", why}, {"not_logged_before", std::to_string(held_back)}});
    }
    if (c.outgoing) {
      for (auto& [partition, f] : followed)
        if (f.address == c.address) f.why = "the handshake with the leader failed: " + why;
    }
    if (c.link != nullptr) c.link->close();
  }

  void on_link_gone(Connection& c) {
    if (c.end_handled) return;
    c.end_handled = true;
    for (auto& [partition, l] : led) {
      for (auto& [id, f] : l.followers) {
        if (f.connection == &c) f.connection = nullptr;
      }
    }
    c.streams.clear();
    c.unsent.clear();
    if (c.outgoing) {
      if (c.link != nullptr) c.link->close();
      release_retired(c);
      if (std::uint64_t held_back = 0; link_logs.allow(now_ms(), held_back)) {
        log(LogLevel::kWarn, "replication: the link to a leader ended; reconnecting",
            {{"leader", c.address}, {"error", c.link != nullptr ? c.link->error().message : ""}, {"not_logged_before", std::to_string(held_back)}});
      }
      // A handshake that keeps failing (another secret) is tried again less and less often, up
      // to every 10 s, not every retry_backoff_ms for good.
      if (!c.authenticated) c.handshake_failures = std::min(c.handshake_failures + 1, 16);
      const std::int64_t wait = c.authenticated ? options.retry_backoff_ms
                                                : std::min<std::int64_t>(options.retry_backoff_ms << std::min(c.handshake_failures - 1, 10), 10'000);
      c.retry_at_ms = now_ms() + std::max<std::int64_t>(wait, options.retry_backoff_ms);
      for (auto& [partition, f] : followed) {
        if (f.address != c.address) continue;
        if (f.state != FollowState::kBackoff) f.state = FollowState::kNeedFollow;
        // A leader ends a link whose hello it could not verify, and says nothing to a peer it
        // does not trust.
        if (!c.authenticated && f.why.empty()) f.why = "the leader ended the link during the handshake (is this node's replication secret the leader's?)";
      }
    }
  }

  bool poll_connection(Connection& c) {
    if (c.link == nullptr || !c.poll_due) return false;
    c.poll_due = false;
    std::array<LinkCompletion, 64> batch;
    bool any = false;
    for (int round = 0; round < 16; ++round) {
      const std::size_t n = c.link->poll(batch);
      for (std::size_t i = 0; i < n; ++i) {
        handle(c, batch[i]);
        if (c.link == nullptr) return true;
      }
      any = any || n > 0;
      if (n < batch.size()) return any;
    }
    c.poll_due = true;  // more than 16 full batches: the rest in the next round
    return any;
  }

  bool step_followers() {
    bool any = false;
    const std::int64_t now = now_ms();
    for (auto& entry : outgoing) {
      const std::string& address_ = entry.first;  // captured below: not a structured binding (clang 14)
      std::unique_ptr<Connection>& c = entry.second;
      const bool wanted = std::any_of(followed.begin(), followed.end(), [&](const auto& f) { return f.second.address == address_; });
      if (!wanted) continue;
      // A link this side ended (a handshake it failed) before its end was polled: its end is
      // handled now, so the back-off counts it before the connect below.
      if (c->link != nullptr && !c->up()) on_link_gone(*c);
      if (!c->up() && !c->connecting.valid() && now >= c->retry_at_ms) {
        if (c->link != nullptr) {
          c->link->close();
          c->in_flight.clear();
          release_retired(*c);
          c->link.reset();
        }
        // The connect's thread wakes this one when it is done (its wake fd, when it has one).
        c->connecting = std::async(std::launch::async, [&t = transport, address = address_, timeout = options.connect_timeout_ms, fd = wake_fd] {
          name_this_thread("weft-connect");
          Result<std::unique_ptr<Link>> link = t.connect(address, timeout);
          const std::uint64_t one = 1;
          if (fd >= 0) (void)!::write(fd, &one, sizeof one);
          return link;
        });
      }
      if (c->connecting.valid() && c->connecting.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
        Result<std::unique_ptr<Link>> link = c->connecting.get();
        if (link.ok()) {
          c->link = std::move(link.value());
          c->unsent.clear();
          c->poll_due = true;
          c->begin_handshake(now + options.handshake_timeout_ms);  // the leader's challenge comes first
          for (auto& [partition, f] : followed) {
            if (f.address == address_ && f.state != FollowState::kBackoff) f.state = FollowState::kNeedFollow;
          }
          any = true;
        } else {
          c->link.reset();
          c->retry_at_ms = now + options.retry_backoff_ms;
          for (auto& [partition, f] : followed) {
            if (f.address == address_) f.why = "cannot reach the leader: " + link.error().message;
          }
        }
      }
    }
    for (auto& [address_, c] : outgoing)
      if (c->up() && !c->authenticated && now > c->handshake_deadline_ms) handshake_failed(*c, "the leader's handshake did not end in time");
    for (auto& [address_, c] : outgoing)
      if (c->up() && c->authenticated && !c->unsent.empty()) any = send_unsent(*c) || any;
    for (auto& [partition, f] : followed) {
      auto c = outgoing.find(f.address);
      if (c == outgoing.end() || !c->second->up() || !c->second->authenticated) continue;
      if (f.state == FollowState::kBackoff && now >= f.retry_at_ms) f.state = FollowState::kNeedFollow;
      if (f.state == FollowState::kNeedFollow) {
        send_follow(*c->second, f, partition);
        any = true;
      } else if (f.state == FollowState::kStreaming && !f.pending.empty()) {
        any = take_pending(*c->second, f, partition) || any;  // no room yet: wait for the log writer's wake-up
      } else if (f.state == FollowState::kStreaming &&
                 (f.progress_due || f.log->durable_end() != f.reported_durable || f.log->log_end() != f.reported_end)) {
        send_progress(*c->second, f);
        any = true;
      }
    }
    return any;
  }

  // Whether a follower may be waiting to connect: the listener was readable at the last wait,
  // or 10 ms passed (a replicator kept busy never waits). An accept per round that finds no
  // one is a syscall per record on a busy leader.
  bool listener_ready = true;
  std::int64_t last_accept_ms = 0;
  LogRateLimit refusal_logs{5};  // anyone who can reach the port can be refused at will
  LogRateLimit handshake_logs{5};  // ... or fail the handshake at will: apart, so neither drowns the other
  LogRateLimit link_logs{5};  // a follower's links that end (a leader refusing its handshake, again and again)

  bool step_listener() {
    bool any = false;
    const std::int64_t now = now_ms();
    const bool look = listener_ready || now - last_accept_ms >= 10;
    if (look) {
      listener_ready = false;
      last_accept_ms = now;
    }
    // Ended incoming links go once their last completions are polled (first: their places are
    // free for the links accepted below).
    std::erase_if(incoming, [&](const std::unique_ptr<Connection>& c) {
      if (c->up()) return false;
      on_link_gone(*c);
      return true;
    });
    for (int i = 0; look && i < 16; ++i) {
      Result<std::unique_ptr<Link>> link = listener->accept();
      if (!link.ok()) {
        if (link.error().code != Errc::kUnavailable || link.error().message != "no peer is waiting") {
          if (std::uint64_t held_back = 0; refusal_logs.allow(now, held_back)) {
            log(LogLevel::kWarn, "replication: a peer was refused", {{"error", link.error().message}, {"not_logged_before", std::to_string(held_back)}});
          }
          continue;
        }
        break;
      }
      listener_ready = i == 15;  // more may be waiting
      if (incoming.size() >= options.max_incoming_links) {
        // Each link holds its queues (~0.6 MiB); peers are the cluster's nodes, a few links each.
        if (std::uint64_t held_back = 0; refusal_logs.allow(now, held_back)) {
          log(LogLevel::kWarn, "replication: a peer was refused: too many links", {{"peer", link.value()->peer_address()}, {"not_logged_before", std::to_string(held_back)}});
        }
        link.value()->close();
        continue;
      }
      // Links still in their handshake get a few places of their own: strangers that connect and
      // say nothing take those, not the places of the cluster's nodes. When they are all taken the
      // oldest goes if it had 100 ms (a node's handshake takes milliseconds), so strangers that
      // sit on every place do not keep a node's new link out; younger ones keep theirs, so a burst
      // of strangers does not push out a node's link before its hello could come.
      constexpr std::ptrdiff_t kLinksInHandshake = 16;
      constexpr std::int64_t kHandshakeHeldMs = 100;
      Connection* oldest = nullptr;
      std::ptrdiff_t in_handshake = 0;
      for (auto& in : incoming) {
        if (!in->up() || in->authenticated) continue;
        ++in_handshake;
        if (oldest == nullptr || in->handshake_deadline_ms < oldest->handshake_deadline_ms) oldest = in.get();
      }
      if (in_handshake >= kLinksInHandshake) {
        if (oldest != nullptr && now - (oldest->handshake_deadline_ms - options.handshake_timeout_ms) >= kHandshakeHeldMs) {
          handshake_failed(*oldest, "its place went to a newer link (too many links in their handshake)");
        } else {
          if (std::uint64_t held_back = 0; refusal_logs.allow(now, held_back)) {
            log(LogLevel::kWarn, "replication: a peer was refused: too many links in their handshake",
                {{"peer", link.value()->peer_address()}, {"not_logged_before", std::to_string(held_back)}});
          }
          link.value()->close();
          continue;
        }
      }
      auto c = std::make_unique<Connection>();
      c->link = std::move(link.value());
      challenge(*c);
      incoming.push_back(std::move(c));
      any = true;
    }
    for (auto& c : incoming)
      if (c->up() && !c->authenticated && now > c->handshake_deadline_ms) handshake_failed(*c, "no answer to the challenge in time");
    return any;
  }

  int wake_fd = -1;

  std::vector<pollfd> fds;             // wait()'s, kept to spare an allocation per wait...
  std::vector<Connection*> fd_owners;  // ... and whose link each of fds[first_link_fd..] is

  // The next round polls the links found readable here (and those posted on since, see
  // Connection::poll_due); a round that does not wait polls them all.
  void wait(int timeout_ms) {
    fds.clear();
    fd_owners.clear();
    fds.push_back(pollfd{listener->event_fd(), POLLIN, 0});
    if (wake_fd >= 0) fds.push_back(pollfd{wake_fd, POLLIN, 0});
    const std::size_t first_link_fd = fds.size();
    auto watch = [&](Connection& c) {
      if (c.link == nullptr) return;
      fds.push_back(pollfd{c.link->event_fd(), POLLIN, 0});
      fd_owners.push_back(&c);
    };
    for (auto& c : incoming) watch(*c);
    for (auto& [a, c] : outgoing) watch(*c);
    const int ready = ::poll(fds.data(), fds.size(), timeout_ms);
    for (std::size_t k = 0; k < fd_owners.size(); ++k) {
      // A timeout polls them all too: a link's state is its own (RDMA: a completion queue), and
      // this keeps anything it holds back from waiting longer than a timeout.
      fd_owners[k]->poll_due = fd_owners[k]->poll_due || ready <= 0 || fds[first_link_fd + k].revents != 0;
    }
    if (ready <= 0) return;
    listener_ready = listener_ready || (fds[0].revents & POLLIN) != 0;
    if (wake_fd >= 0 && (fds[1].revents & POLLIN) != 0) {
      std::uint64_t count = 0;
      (void)!::read(wake_fd, &count, sizeof count);
    }
  }

  void poll_every_link_next() {
    for (auto& c : incoming) c->poll_due = true;
    for (auto& [a, c] : outgoing) c->poll_due = true;
  }
};

Replicator::Replicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Replicator::~Replicator() {
  // Links first (nothing lands any more), then the regions they wrote into.
  for (auto& c : impl_->incoming) {
    if (c->link != nullptr) c->link->close();
  }
  for (auto& [address, c] : impl_->outgoing) {
    if (c->link != nullptr) c->link->close();
    impl_->release_retired(*c);
  }
  for (auto& [partition, f] : impl_->followed) (void)impl_->transport.deregister_region(f.descriptor.key);
}

Result<PushRead> ReplicaLog::read_for_push(Offset offset, std::span<std::byte> staging, std::span<std::span<const std::byte>> pieces,
                                           PushHold& hold) {
  (void)hold;
  WEFT_TRY(const std::size_t got, read(offset, staging));
  return copied_push(staging, got, offset, pieces);
}

PushRead ReplicaLog::copied_push(std::span<const std::byte> staging, std::size_t got, Offset offset,
                                 std::span<std::span<const std::byte>> pieces) {
  PushRead r{got, 0, offset};
  if (got == 0) return r;
  pieces[r.pieces++] = staging.first(got);
  for (std::size_t at = 0; at < got;) {
    Result<BatchView> batch = BatchView::parse_header(staging.subspan(at, got - at), false);
    if (!batch.ok()) break;
    r.next = batch->last_offset() + 1;
    at += batch->size_bytes();
  }
  return r;
}

Result<std::unique_ptr<Replicator>> Replicator::start(Transport& transport, NodeId self, std::string_view listen_address,
                                                      ReplicationOptions options) {
  if (options.max_write_bytes == 0 || options.region_bytes < options.max_write_bytes || options.writes_in_flight == 0) {
    return Error{Errc::kInvalidArgument, "replication: the region must hold at least one write, and writes must be allowed"};
  }
  auto impl = std::make_unique<Impl>(transport, self, options);
  WEFT_TRY(impl->listener, transport.listen(listen_address));
  impl->address = impl->listener->address();
  return std::unique_ptr<Replicator>(new Replicator(std::move(impl)));
}

const std::string& Replicator::address() const noexcept { return impl_->address; }
NodeId Replicator::self() const noexcept { return impl_->self; }

Result<void> Replicator::lead(const PartitionId& partition, ReplicaLog* log_, std::int32_t epoch, std::vector<NodeId> replicas,
                              std::vector<NodeId> isr, std::int64_t revision) {
  if (log_ == nullptr) return Error{Errc::kInvalidArgument, "replication: no log for " + to_string(partition)};
  // A follower promoted keeps the high watermark it had learned; followers in the set give
  // theirs soon, and it only moves up from there.
  Offset hw = log_->log_start();
  if (auto was = impl_->followed.find(partition); was != impl_->followed.end()) hw = std::min(was->second.hw, log_->log_end());
  forget(partition);
  Impl::Led& l = impl_->led[partition];
  l.log = log_;
  l.epoch = epoch;
  l.epoch_start = log_->log_end();
  log_->epochs().assign(epoch, l.epoch_start);
  log_->save_epochs(EpochSave::kWithTheLog);
  l.replicas = std::move(replicas);
  l.isr = std::move(isr);
  std::sort(l.isr.begin(), l.isr.end());
  l.isr_revision = revision;
  l.hw = std::max(hw, log_->log_start());
  // The high watermark before the ring opens to producers: their acks=all waits read it.
  log_->publish_high_watermark(l.hw);
  log_->stamp_leader_epoch(epoch);
  const std::int64_t now = now_ms();
  for (NodeId id : l.isr) {
    if (id == impl_->self) continue;
    Impl::FollowerState& f = l.followers[id];
    f.last_caught_up_ms = now;  // every member of the set gets the full lag time to report
    f.durable_end = l.hw;
  }
  impl_->update_hw(partition, l);
  return ok();
}

Result<void> Replicator::follow(const PartitionId& partition, ReplicaLog* log_, std::int32_t epoch, NodeId leader,
                                std::string leader_address) {
  if (log_ == nullptr) return Error{Errc::kInvalidArgument, "replication: no log for " + to_string(partition)};
  forget(partition);
  log_->stamp_leader_epoch(-1);
  Impl::Followed f;
  f.log = log_;
  f.epoch = epoch;
  f.leader = leader;
  f.address = std::move(leader_address);
  f.region = LandingRegion::of(impl_->options.region_bytes);
  WEFT_TRY(LocalRegion region, impl_->transport.register_region(f.region.span()));
  f.descriptor = region.descriptor;
  for (int tries = 0; tries < 65536 && impl_->followed_by_stream.contains(impl_->next_stream); ++tries) ++impl_->next_stream;
  f.stream = impl_->next_stream++;
  if (impl_->next_stream == 0) impl_->next_stream = 1;
  impl_->followed_by_stream[f.stream] = partition;
  impl_->connection_to(f.address);
  impl_->followed[partition] = std::move(f);
  return ok();
}

void Replicator::forget(const PartitionId& partition) {
  if (auto l = impl_->led.find(partition); l != impl_->led.end()) {
    for (auto& c : impl_->incoming) {
      for (auto s = c->streams.begin(); s != c->streams.end();) {
        if (s->second.partition == partition) {
          impl_->refuse(*c, s->first, MessageType::kRefused, l->second.epoch, -1, "the leader stepped down");
          s = c->streams.erase(s);
        } else {
          ++s;
        }
      }
    }
    impl_->led.erase(l);
  }
  if (auto f = impl_->followed.find(partition); f != impl_->followed.end()) {
    auto c = impl_->outgoing.find(f->second.address);
    // A write may still be landing in the region: it stays registered and allocated until the
    // leader answers the unfollow or the link ends (a write for the old stream lands there
    // harmlessly meanwhile). A link that is down, or still in its handshake (no stream yet, and
    // nothing but the handshake may cross it), lands nothing more.
    MessageWriter m;
    m.put(static_cast<std::uint8_t>(MessageType::kUnfollow)).put(f->second.stream);
    if (c != impl_->outgoing.end() && c->second->authenticated && Impl::send(*c->second, m)) {
      c->second->retired.push_back(Impl::Connection::Retired{f->second.descriptor.key, std::move(f->second.region), f->second.stream});
    } else {
      (void)impl_->transport.deregister_region(f->second.descriptor.key);
    }
    impl_->followed_by_stream.erase(f->second.stream);
    impl_->followed.erase(f);
  }
}

void Replicator::set_isr(const PartitionId& partition, std::int32_t epoch, std::vector<NodeId> isr, std::int64_t revision) {
  auto l = impl_->led.find(partition);
  if (l == impl_->led.end() || l->second.epoch != epoch) return;
  Impl::Led& led = l->second;
  if (revision >= 0 && revision < led.isr_revision) return;  // older than the state applied
  std::sort(isr.begin(), isr.end());
  led.isr = std::move(isr);
  if (revision >= 0) led.isr_revision = revision;
  // Answered when the set holds what the proposal adds, or the state is from after its outcome;
  // a state from before it (a role queued before the commit, or the metadata read when the
  // commit's answer was lost) may lack members the metadata holds by now, and they keep counting.
  const bool holds_additions = std::all_of(led.proposed_additions.begin(), led.proposed_additions.end(),
                                           [&](NodeId id) { return std::binary_search(led.isr.begin(), led.isr.end(), id); });
  if (revision < 0 || holds_additions || (led.settled_from >= 0 && revision >= led.settled_from)) led.settle();
  const std::int64_t now = now_ms();
  for (NodeId id : led.isr) {
    if (id == impl_->self) continue;
    auto& f = led.followers[id];
    if (f.last_caught_up_ms == 0) f.last_caught_up_ms = now;
  }
  impl_->update_hw(partition, led);
}

void Replicator::proposal_settled(const PartitionId& partition, std::int32_t epoch, std::uint64_t sequence, std::int64_t from_revision) {
  auto l = impl_->led.find(partition);
  if (l == impl_->led.end() || l->second.epoch != epoch || !l->second.proposal_pending || l->second.proposal_sequence != sequence) return;
  Impl::Led& led = l->second;
  led.settled_from = from_revision;
  if (led.isr_revision >= from_revision) led.settle();  // the state applied already says it
}

void Replicator::set_replicas(const PartitionId& partition, std::int32_t epoch, std::vector<NodeId> replicas) {
  auto l = impl_->led.find(partition);
  if (l == impl_->led.end() || l->second.epoch != epoch) return;
  l->second.replicas = std::move(replicas);
  for (auto f = l->second.followers.begin(); f != l->second.followers.end();) {
    if (contains(l->second.replicas, f->first)) {
      ++f;
      continue;
    }
    if (f->second.connection != nullptr) {
      impl_->refuse(*f->second.connection, f->second.stream, MessageType::kRefused, epoch, -1, "no longer a replica");
      f->second.connection->streams.erase(f->second.stream);
    }
    f = l->second.followers.erase(f);
  }
}

std::vector<IsrProposal> Replicator::take_isr_proposals() { return std::exchange(impl_->proposals, {}); }

std::optional<Offset> Replicator::high_watermark(const PartitionId& partition) const {
  if (auto l = impl_->led.find(partition); l != impl_->led.end()) return l->second.hw;
  if (auto f = impl_->followed.find(partition); f != impl_->followed.end()) return std::min(f->second.hw, f->second.log->log_end());
  return std::nullopt;
}

std::size_t Replicator::incoming_links() const noexcept { return impl_->incoming.size(); }

std::vector<ReplicaStatus> Replicator::status() const {
  std::vector<ReplicaStatus> out;
  const std::int64_t now = now_ms();
  for (const auto& [partition, l] : impl_->led) {
    ReplicaStatus s;
    s.partition = partition;
    s.leader = true;
    s.leader_epoch = l.epoch;
    s.leader_id = impl_->self;
    s.log_end = l.log->log_end();
    s.high_watermark = l.hw;
    s.isr = l.isr;
    s.state = "leading";
    for (const auto& [id, f] : l.followers) {
      s.followers.push_back(ReplicaStatus::Follower{id, f.connection != nullptr, f.log_end, f.durable_end, now - f.last_caught_up_ms});
    }
    out.push_back(std::move(s));
  }
  for (const auto& [partition, f] : impl_->followed) {
    ReplicaStatus s;
    s.partition = partition;
    s.leader_epoch = f.epoch;
    s.leader_id = f.leader;
    s.log_end = f.log->log_end();
    s.high_watermark = std::min(f.hw, s.log_end);
    switch (f.state) {
      case Impl::FollowState::kStreaming: s.state = "streaming"; break;
      case Impl::FollowState::kAwaitAccept: s.state = "following"; break;
      case Impl::FollowState::kNeedFollow: s.state = f.why.empty() ? "connecting" : "connecting: " + f.why; break;
      case Impl::FollowState::kBackoff: s.state = f.why; break;
    }
    out.push_back(std::move(s));
  }
  return out;
}

void Replicator::set_wake_fd(int fd) noexcept { impl_->wake_fd = fd; }

void Replicator::run_once(int timeout_ms) {
  Impl& i = *impl_;
  bool any = i.step_listener();
  for (auto& c : i.incoming) any = i.poll_connection(*c) || any;
  for (auto& [a, c] : i.outgoing) any = i.poll_connection(*c) || any;
  any = i.step_followers() || any;
  i.next_hw_due_ns = INT64_MAX;
  for (auto& c : i.incoming) {
    if (c->up()) any = i.push(*c) || any;
  }
  for (auto& [partition, l] : i.led) {
    // After the pushes, so the followers write while the leader does.
    l.log->write_through();
    i.update_hw(partition, l);  // the leader's own durable end moves too
  }
  const std::int64_t now = now_ms();
  if (now - i.last_lag_check_ms >= 50) {
    i.last_lag_check_ms = now;
    i.check_lag();
  }
  if (!any && timeout_ms > 0) {
    if (i.next_hw_due_ns != INT64_MAX) {
      const std::int64_t until_ms = (i.next_hw_due_ns - monotonic_ns() + 999'999) / 1'000'000;
      timeout_ms = static_cast<int>(std::clamp<std::int64_t>(until_ms, 0, timeout_ms));
    }
    i.wait(timeout_ms);
  } else {
    i.poll_every_link_next();
  }
}

}  // namespace weft

#include "weft/consumer.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <deque>
#include <optional>
#include <utility>

#include "weft/fabric/io_ring.h"
#include "weft/fabric/time_lookup.h"

namespace weft {
namespace {

constexpr std::size_t kDirectReadAlign = 4096;

// Reading a partition's log from a segment file while the ring no longer holds the position.
// While the caller decodes one buffer, the next stretch of the file is read into the other
// (io_uring where allowed: O_DIRECT has no kernel read-ahead of its own).
struct ColdRead {
  struct Free {
    void operator()(std::byte* p) const noexcept { std::free(p); }
  };
  using Buffer = std::unique_ptr<std::byte[], Free>;
  LogSlice slice;       // slice.position: the next byte to read from the file
  Buffer buffer;        // page-aligned, for O_DIRECT: whole batches read...
  Buffer spare;         // ... and the stretch after them, being read ahead into this one
  std::size_t capacity = 0;  // of each
  std::size_t at = 0;        // [at, size) of buffer not yet returned
  std::size_t size = 0;
  bool direct = true;   // reading with O_DIRECT (until the file refuses)
  // The read ahead: [ahead_from, ahead_from + ahead_span) of the file into spare.
  bool ahead = false;
  std::uint64_t ahead_from = 0;
  std::uint64_t ahead_span = 0;
  bool no_ring = false;          // io_uring refused, or rings enough: plain reads, one at a time
  // The last offset of the batch before in this slice (-1: none yet), and where records stopped
  // being delivered when a batch header was found damaged (reported once a good batch follows).
  Offset last_taken{-1};
  std::optional<Offset> damaged_from;
  // One of the process's read-ahead rings. Each holds a descriptor: a consumer replaying a
  // thousand partitions must not spend its descriptor limit on them (the slices need theirs).
  struct RingSlot {
    static constexpr int kMaxRings = 64;
    static inline std::atomic<int> live{0};  // relaxed: a count, guarding nothing else
    bool held = false;
    RingSlot() = default;
    RingSlot(RingSlot&& other) noexcept : held(std::exchange(other.held, false)) {}
    RingSlot& operator=(RingSlot&&) = delete;
    ~RingSlot() {
      if (held) live.fetch_sub(1, std::memory_order_relaxed);
    }
    bool take() {
      held = live.fetch_add(1, std::memory_order_relaxed) < kMaxRings;
      if (!held) live.fetch_sub(1, std::memory_order_relaxed);
      return held;
    }
  };
  RingSlot ring_slot;
  std::unique_ptr<IoRing> ring;  // last: gone first, waiting for a read into the buffers above
  std::byte* data() const noexcept { return buffer.get(); }

  // The stretch a read from slice.position covers: with O_DIRECT it starts at the block
  // holding the position and covers whole blocks.
  std::uint64_t read_from() const noexcept { return direct ? slice.position & ~std::uint64_t{kDirectReadAlign - 1} : slice.position; }
  std::uint64_t read_span(std::uint64_t from) const noexcept {
    const std::uint64_t span = std::min<std::uint64_t>(capacity - kDirectReadAlign, slice.end - from);
    return direct ? (span + kDirectReadAlign - 1) & ~std::uint64_t{kDirectReadAlign - 1} : span;
  }

  // The read ahead's result (bytes, or -errno); waits for it.
  std::int64_t finish_ahead() {
    ahead = false;
    IoCompletion done[1];
    if (!ring || ring->reap(done, true) == 0) return -EIO;
    return done[0].result;
  }
};

struct Assignment {
  std::string topic;  // stable: records' topic views point here (assignments live in a deque)
  std::uint32_t partition = 0;
  PartitionMemory memory;
  std::optional<Consumer> consumer;  // reading the ring; none while cold
  std::optional<ColdRead> cold;      // reading the log; the next offset is skip_below
  bool no_log = false;               // the node keeps no log of this partition
  Offset skip_below{-1};  // after a seek into the middle of a batch: its earlier records are not returned
  bool caught_up = false;  // the last poll drained this partition
  // A batch that max_poll_records cut short (the ring consumer is past it): its records from
  // skip_below on come first in the next poll.
  std::optional<RingBatch> pending{};
  Offset visible_end{0};  // the high watermark last read (a replicated partition's)
};

// Kafka's rule for a replicated partition: nothing at or past the high watermark reaches a
// consumer. Costs a load of the ring's read-mostly mode line per batch; the high watermark is
// re-read only when a batch reaches the one last seen.
bool beyond_high_watermark(Assignment& a, Offset last) noexcept {
  // Relaxed: the mode line moves only with the node's role, and the first batches after a
  // change are checked against the high watermark, read with acquire below.
  if (a.memory.ring.control().mode.leader_epoch.load(std::memory_order_relaxed) == ring_layout::kNotReplicated) [[likely]]
    return false;
  if (last < a.visible_end) return false;
  a.visible_end = visible_end(a.memory.ring);
  return last >= a.visible_end;
}

Offset last_offset_of(const RingBatch& batch) noexcept { return Offset{batch.base_offset.value + batch.records - 1}; }

}  // namespace

struct TopicConsumer::State {
  std::shared_ptr<Client> client;
  ConsumerOptions options;
  std::deque<Assignment> assignments;
  std::vector<ConsumedRecord> records;
  std::vector<PollNotice> notices;
  struct Polled {
    Assignment* from;
    RingBatch batch;
  };
  std::vector<Polled> polled;  // per run of one partition's batches in the last poll, its oldest
  std::size_t next_assignment = 0;
  RecordView scratch;
  std::optional<Error> deferred;  // a failure after records were taken: reported by the next poll
  // Compressed batches (Kafka clients send them): each one a poll takes records from is
  // decompressed into a buffer of its own, as its records' views last until the next poll. The
  // buffers and the codecs' contexts are kept from poll to poll, so a steady stream allocates nothing.
  Decompressor decompressor;
  std::vector<std::vector<std::byte>> inflated;  // [0, inflated_used) hold this poll's records
  std::size_t inflated_used = 0;
  std::size_t inflated_bytes = 0;     // in those buffers: a poll stops taking batches past max_decompressed_bytes
  std::vector<std::byte> compressed;  // a ring batch's records section, copied out of producers' reach

  Assignment* find(std::string_view topic, std::uint32_t partition) {
    for (Assignment& a : assignments)
      if (a.partition == partition && a.topic == topic) return &a;
    return nullptr;
  }

  // Drops a partition whose topic is gone. Only while no record or notice points into the
  // assignments: they move.
  void unassign(const Assignment* gone) {
    std::deque<Assignment> kept;
    for (Assignment& a : assignments)
      if (&a != gone) kept.push_back(std::move(a));
    assignments.swap(kept);
    if (next_assignment >= assignments.size()) next_assignment = 0;
  }

  // Forgets what this poll took from `a` (it was overwritten). Returns where the loss begins
  // as a notice reports it (the oldest polled batch's base, or `otherwise`), and where a reader
  // of the log resumes (the first record this poll took: a batch cut by an earlier poll or a
  // seek had its earlier records delivered already).
  struct Dropped {
    Offset notice_from;
    Offset resume_from;
  };
  Dropped drop_polled(Assignment& a, Offset otherwise) {
    a.pending.reset();  // older than what was overwritten, so overwritten too
    Dropped d{otherwise, otherwise};
    for (const Polled& p : polled)
      if (p.from == &a) {
        d.notice_from = p.batch.base_offset;
        break;
      }
    bool took = false;
    for (const ConsumedRecord& r : records)
      if (r.partition == a.partition && r.topic.data() == a.topic.data() && (!took || r.offset < d.resume_from)) {
        d.resume_from = r.offset;
        took = true;
      }
    std::erase_if(records, [&](const ConsumedRecord& r) { return r.partition == a.partition && r.topic.data() == a.topic.data(); });
    std::erase_if(polled, [&](const Polled& p) { return p.from == &a; });
    return d;
  }

  // Appends a batch's records, up to max_poll_records (the rest is left pending: `cut` set, and
  // for a ring batch a.pending); false (records untouched) when the batch is malformed.
  bool take(Assignment& a, const RingBatch& batch, bool from_ring = true, bool* cut = nullptr) {
    const std::size_t before = records.size();
    auto add = [&](const RecordView& r) {
      if (r.offset < a.skip_below) return true;
      if (records.size() >= options.max_poll_records) {
        if (from_ring) a.pending = batch;
        if (cut != nullptr) *cut = true;
        a.skip_below = r.offset;
        return false;
      }
      // A brace-initialised temporary: clang 14 (the fuzz build) has no parenthesised aggregate
      // initialisation for emplace_back; the move of these few words is what emplace saved.
      records.push_back(ConsumedRecord{a.topic, a.partition, r.offset, r.timestamp_ms, r.key, r.value, r.header_count, r.headers_bytes});
      return true;
    };
    RecordView& r = scratch;  // reused: value-initialising a RecordView per batch shows in profiles
    auto read = [&](RecordReader& reader) {
      while (reader.next(r) && add(r)) {
      }
      if (reader.failed()) records.resize(before);
      return !reader.failed();
    };
    if (batch.records == 1 && !options.check_crcs && decode_single_record_batch(batch.bytes, r)) {
      add(r);
    } else {
      Result<BatchView> view = BatchView::parse_header(batch.bytes, options.check_crcs);
      if (!view.ok()) return false;
      if (view->compression() != Compression::kNone) [[unlikely]] {
        const std::optional<std::span<const std::byte>> decompressed = inflate(*view, from_ring);
        if (!decompressed) return false;
        RecordReader reader(*view, *decompressed);
        if (!read(reader)) return false;
        if (records.size() > before) keep_inflated();  // else nothing points into it: reused
        return true;
      }
      RecordReader reader(*view);
      if (!read(reader)) return false;
    }
    return true;
  }

  // The records section of a compressed batch, decompressed into this poll's next buffer (which
  // keep_inflated() keeps for the records taken from it); nothing if it does not decompress.
  std::optional<std::span<const std::byte>> inflate(const BatchView& view, bool from_ring) {
    std::span<const std::byte> in = view.bytes().subspan(kBatchHeaderBytes);
    if (from_ring) {
      // Producers may overwrite ring memory while it is read (the poll's final check then drops
      // what was read from it); the codecs are given bytes that hold still.
      compressed.assign(in.begin(), in.end());
      in = compressed;
    }
    if (inflated_used == inflated.size()) inflated.emplace_back();
    std::vector<std::byte>& out = inflated[inflated_used];
    if (!decompressor.decompress(view.compression(), in, out, options.max_decompressed_bytes).ok()) return std::nullopt;
    return std::span<const std::byte>(out);
  }
  void keep_inflated() {
    inflated_bytes += inflated[inflated_used].size();
    ++inflated_used;
  }
  // This poll holds as many records, or as many decompressed bytes, as it may.
  bool full() const noexcept {
    return records.size() >= options.max_poll_records || inflated_bytes >= options.max_decompressed_bytes;
  }
  // At the start of a poll: the last poll's decompressed records are no longer in use. Buffers
  // are kept for the next batches, unless together they grew past twice a poll's budget.
  void reuse_inflated() {
    inflated_used = 0;
    inflated_bytes = 0;
    std::size_t held = compressed.capacity();
    for (const std::vector<std::byte>& buffer : inflated) held += buffer.capacity();
    if (held > 2 * options.max_decompressed_bytes) {
      inflated.clear();
      compressed = {};
    }
  }

  // ---- behind the ring: the log -------------------------------------------------------------

  // Starts reading the log at `offset`. False when the node keeps no log of this partition
  // (a.no_log set); retention having deleted the offset is a kOutOfRange notice, then the
  // log's start.
  Result<bool> go_cold(Assignment& a, Offset offset, bool to_earliest_when_deleted = true) {
    Result<LogSlice> slice = client->open_log_slice(a.topic, a.partition, offset);
    if (!slice.ok() && slice.error().code == Errc::kOutOfRange && to_earliest_when_deleted) {
      slice = client->open_log_slice(a.topic, a.partition, kEarliestOffset);
      if (slice.ok()) notices.push_back(PollNotice{PollNotice::Kind::kOutOfRange, a.topic, a.partition, offset, slice->offset});
    }
    if (!slice.ok()) {
      if (slice.error().code != Errc::kUnsupported) return std::move(slice).error();
      a.no_log = true;
      return false;
    }
    a.consumer.reset();  // its slot would hold producers back under flow control
    a.pending.reset();
    a.skip_below = slice->offset;
    ColdRead& cold = a.cold.emplace();
    cold.slice = std::move(*slice);
    return true;
  }

  // The ring overwrote what `a` had not read from `missed` on: read it from the log, or, with no
  // log, report the loss and go on from the oldest intact batch.
  Result<void> lapped(Assignment& a, Dropped missed) {
    if (!a.no_log) {
      WEFT_TRY(const bool cold, go_cold(a, missed.resume_from));
      if (cold) return ok();
    }
    const Offset resumed = a.consumer->rejoin();
    notices.push_back(PollNotice{PollNotice::Kind::kLapped, a.topic, a.partition, missed.notice_from, resumed});
    return ok();
  }

  // Moves a cold partition to the ring once the ring holds its next offset.
  bool try_hot(Assignment& a) {
    if (a.memory.ring.reuse_limit().offset > a.skip_below) return false;
    if (!a.consumer) {
      Result<Consumer> attached = Consumer::attach(a.memory.ring, StartAt::kEarliest);
      if (!attached.ok()) return false;  // no slot free now: keep reading the log
      a.consumer.emplace(std::move(*attached));
    }
    if (!a.consumer->seek(a.skip_below).ok()) {
      a.consumer.reset();  // overwritten meanwhile: still cold, and holding no producer back
      return false;
    }
    a.cold.reset();
    return true;
  }

  // Reads the next whole batches of the slice into the buffer, then starts reading the stretch
  // after them; false at the slice's end.
  Result<bool> refill(Assignment& a) {
    ColdRead& c = *a.cold;
    c.at = c.size = 0;
    std::size_t wanted = std::max(options.log_read_bytes, kDirectReadAlign * 4);
    while (c.slice.position < c.slice.end) {
      if (c.capacity < wanted + kDirectReadAlign) {
        if (c.ahead) (void)c.finish_ahead();  // it reads into the buffer about to go
        const std::size_t capacity = (wanted + 2 * kDirectReadAlign - 1) / kDirectReadAlign * kDirectReadAlign;
        auto* raw = static_cast<std::byte*>(std::aligned_alloc(kDirectReadAlign, capacity));
        auto* spare = static_cast<std::byte*>(std::aligned_alloc(kDirectReadAlign, capacity));
        c.buffer.reset(raw);
        c.spare.reset(spare);
        if (raw == nullptr || spare == nullptr) {
          c.capacity = 0;
          return Error{Errc::kResourceExhausted, "no memory for a log read of " + std::to_string(capacity) + " bytes"};
        }
        c.capacity = capacity;
      }
      if (c.direct) {
        // Cold data is read straight from the disk into the buffer, sparing the page cache's copy
        // (a reader streaming a whole log would only evict what others use).
        const int flags = fcntl(c.slice.file.get(), F_GETFL);
        c.direct = flags >= 0 && ((flags & O_DIRECT) != 0 || fcntl(c.slice.file.get(), F_SETFL, flags | O_DIRECT) == 0);
      }
      // With O_DIRECT the read starts at the block holding `position` and covers whole blocks.
      const std::uint64_t from = c.read_from();
      const std::size_t head = static_cast<std::size_t>(c.slice.position - from);
      const std::uint64_t span = c.read_span(from);
      std::int64_t got = -EAGAIN;
      if (c.ahead) {
        const bool same = c.ahead_from == from && c.ahead_span == span;
        got = c.finish_ahead();
        // Short of what the slice holds there (it should not be): read it again here.
        if (same && got >= 0 && static_cast<std::uint64_t>(got) >= std::min<std::uint64_t>(span, c.slice.end - from)) {
          std::swap(c.buffer, c.spare);
        } else {
          got = -EAGAIN;  // not the stretch wanted now, or it failed: read it here
        }
      }
      if (got == -EAGAIN) {
        const ssize_t n = pread(c.slice.file.get(), c.data(), static_cast<std::size_t>(span), static_cast<off_t>(from));
        got = n < 0 ? -errno : n;
      }
      if (got < 0) {
        if (got == -EINTR) continue;
        if (got == -EINVAL && c.direct) {
          c.direct = false;  // the file system refuses direct reads: the page cache, then
          const int flags = fcntl(c.slice.file.get(), F_GETFL);
          if (flags >= 0) fcntl(c.slice.file.get(), F_SETFL, flags & ~O_DIRECT);
          continue;
        }
        return os_error(Errc::kIo, "reading the log of '" + a.topic + "' partition " + std::to_string(a.partition), static_cast<int>(-got));
      }
      // Bytes past the slice's end may be a batch being written: never look at them.
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(static_cast<std::uint64_t>(got), c.slice.end - from));
      if (n <= head) return Error{Errc::kCorrupt, "the log of '" + a.topic + "' partition " + std::to_string(a.partition) + " ended early"};
      // Whole batches only: a batch cut by the read's end is read again next time.
      std::size_t whole = head;
      std::uint64_t first_batch = 0;
      while (n - whole >= kBatchLogOverhead) {
        const std::uint64_t total = kBatchLogOverhead + static_cast<std::uint32_t>(wire::load_be32(c.data() + whole + batch_field::kBatchLength));
        if (first_batch == 0) first_batch = total;
        if (total < kBatchHeaderBytes || total > n - whole) break;
        whole += static_cast<std::size_t>(total);
      }
      if (whole == head) {
        // One batch larger than the buffer: grow to it, or give up on the file. Its length lies
        // outside the CRC, so it is believed only as far as the segment holds bytes after it.
        if (first_batch < kBatchHeaderBytes || first_batch > c.slice.end - c.slice.position || first_batch + head + kDirectReadAlign <= c.capacity)
          return Error{Errc::kCorrupt, "a batch in the log of '" + a.topic + "' partition " + std::to_string(a.partition) +
                                           " has an impossible length at byte " + std::to_string(c.slice.position)};
        wanted = static_cast<std::size_t>(first_batch) + head + kDirectReadAlign;
        continue;
      }
      c.slice.position += whole - head;
      c.at = head;
      c.size = whole;
      read_ahead(c);
      return true;
    }
    return false;
  }

  // Starts reading the stretch after the buffer's batches into the spare buffer, as the next
  // refill() will ask for it.
  static void read_ahead(ColdRead& c) {
    if (c.no_ring || c.slice.position >= c.slice.end) return;
    if (!c.ring) {
      if (c.ring_slot.take()) c.ring = IoRing::create(2, nullptr);
      if (!c.ring) {
        c.no_ring = true;
        return;
      }
    }
    const std::uint64_t from = c.read_from();
    const std::uint64_t span = c.read_span(from);
    if (!c.ring->read(c.slice.file.get(), std::span<std::byte>(c.spare.get(), static_cast<std::size_t>(span)), from, 1)) {
      // Refused, not queued: nothing will land in spare; the next refill reads by itself.
      if (c.ring->in_flight() > 0) {
        IoCompletion done[1];
        (void)c.ring->reap(done, true);
      }
      return;
    }
    c.ahead = true;
    c.ahead_from = from;
    c.ahead_span = span;
  }

  // Returns records of a cold partition from its buffer, reading on from the file or the next
  // segment as needed, until max_poll_records; switches it to the ring when the ring holds its
  // next offset (then true: poll the ring now).
  Result<bool> poll_cold(Assignment& a) {
    bool returned = false;  // records of the buffer are in use: it must not be refilled now
    for (int round = 0; round < 64 && !full(); ++round) {
      ColdRead& c = *a.cold;
      while (c.at < c.size && !full()) {
        const std::span<const std::byte> bytes(c.data() + c.at, c.size - c.at);
        const std::size_t total = kBatchLogOverhead + static_cast<std::uint32_t>(wire::load_be32(bytes.data() + batch_field::kBatchLength));
        const std::span<const std::byte> one = bytes.first(total);
        const Offset base{wire::load_be64(one.data() + batch_field::kBaseOffset)};
        // From disk: the CRC and the header here; each record is checked as take() decodes it.
        Result<BatchView> view = BatchView::parse_header(one, true);
        // The base offset lies outside the CRC: a batch must come after the one before and below
        // the segment's end when sliced, or its records would be delivered under offsets they
        // do not have (a higher base also moved skip_below past every later record). Skipped,
        // and reported from where delivery stopped to the next good batch.
        const Offset slice_end = c.slice.end_offset;
        if ((c.last_taken.value >= 0 && base <= c.last_taken) || base >= slice_end || (view.ok() && view->last_offset() >= slice_end)) {
          if (!c.damaged_from) c.damaged_from = a.skip_below;
          c.at += total;
          continue;
        }
        if (view.ok() && beyond_high_watermark(a, view->last_offset())) return false;  // read it once replicated
        if (c.damaged_from) {
          notices.push_back(PollNotice{PollNotice::Kind::kCorrupt, a.topic, a.partition, *c.damaged_from, std::max(base, *c.damaged_from)});
          a.skip_below = std::max(base, a.skip_below);
          c.damaged_from.reset();
        }
        RingBatch batch;
        batch.bytes = one;
        batch.base_offset = base;
        bool cut = false;
        if (!view.ok() || !take(a, batch, false, &cut)) {
          // Wrapping sums: `base` may be anything when the header failed its checks.
          const Offset end = view.ok() ? view->last_offset() + 1 : base + 1;
          notices.push_back(PollNotice{PollNotice::Kind::kCorrupt, a.topic, a.partition, a.skip_below, std::max(end, a.skip_below)});
          a.skip_below = std::max(end, a.skip_below);
          c.at += total;
          continue;
        }
        returned = true;
        if (cut) break;  // the rest of it with the next poll, from the same place
        c.last_taken = view->last_offset();
        a.skip_below = std::max(a.skip_below, Offset{view->last_offset().value + 1});
        c.at += total;
      }
      if (full() || returned) return false;
      if (try_hot(a)) return true;
      WEFT_TRY(const bool more, refill(a));
      if (more) continue;
      // The end of this slice: the next segment, or (an empty slice) the end of the log.
      const Offset next = a.skip_below;
      Result<bool> cold = go_cold(a, next);
      if (!cold.ok()) return std::move(cold).error();
      if (!*cold) return false;
      if (a.cold->slice.position == a.cold->slice.end) {
        // Nothing at or after `next` in the log, though the ring no longer holds it: offsets an
        // aborted claim took at the log's end. The ring's window starts after them.
        a.skip_below = std::max(a.skip_below, a.memory.ring.reuse_limit().offset);
        if (try_hot(a)) return true;
        return false;
      }
    }
    return false;
  }
};

TopicConsumer::TopicConsumer(std::unique_ptr<State> state) : state_(std::move(state)) {}
TopicConsumer::TopicConsumer(TopicConsumer&&) noexcept = default;
TopicConsumer& TopicConsumer::operator=(TopicConsumer&&) noexcept = default;
TopicConsumer::~TopicConsumer() = default;

Result<TopicConsumer> TopicConsumer::create(std::shared_ptr<Client> client, ConsumerOptions options) {
  if (!client) return Error{Errc::kInvalidArgument, "consumer: no client"};
  if (options.max_poll_records == 0) return Error{Errc::kInvalidArgument, "consumer: max_poll_records must be at least 1"};
  if (options.max_decompressed_bytes == 0) return Error{Errc::kInvalidArgument, "consumer: max_decompressed_bytes must be at least 1"};
  if (!options.group.empty()) WEFT_TRY_VOID(validate_group_id(options.group));
  auto state = std::make_unique<State>();
  state->client = std::move(client);
  state->options = options;
  state->records.reserve(options.max_poll_records);
  return TopicConsumer(std::move(state));
}

std::size_t TopicConsumer::assigned_partitions() const noexcept { return state_->assignments.size(); }

Result<void> TopicConsumer::assign(std::string_view topic, std::vector<std::uint32_t> partitions, SeekTo start) {
  WEFT_TRY(const TopicInfo info, state_->client->describe_topic(topic));
  if (partitions.empty())
    for (std::uint32_t p = 0; p < info.config.partitions; ++p) partitions.push_back(p);
  for (const std::uint32_t p : partitions) {
    if (p >= info.config.partitions)
      return Error{Errc::kInvalidArgument, "topic '" + info.name + "' has " + std::to_string(info.config.partitions) +
                                               " partitions; there is no partition " + std::to_string(p)};
    if (state_->find(topic, p) != nullptr) continue;
    WEFT_TRY(PartitionMemory memory, state_->client->open_partition(topic, p));
    state_->assignments.push_back(Assignment{info.name, p, std::move(memory), std::nullopt, std::nullopt, false});
    if (Result<void> positioned = seek(topic, p, start); !positioned.ok()) {
      state_->assignments.pop_back();
      return positioned;
    }
  }
  return ok();
}

Result<void> TopicConsumer::seek(std::string_view topic, std::uint32_t partition, SeekTo to) {
  const Result<Offset> before = position(topic, partition);
  Result<void> moved = seek_to(topic, partition, to);
  Assignment* a = state_->find(topic, partition);
  if (!moved.ok() && a != nullptr && !a->consumer && !a->cold) {
    // A seek that failed part-way left the partition unpositioned: back where it was, or (if
    // even that is gone) at the end, so the next poll reads something sane.
    if (before.ok()) (void)seek_to(topic, partition, SeekTo::offset(before->value));
    if (!a->consumer && !a->cold) {
      if (Result<Consumer> at_end = Consumer::attach(a->memory.ring, StartAt::kLatest); at_end.ok()) a->consumer.emplace(std::move(*at_end));
    }
  }
  return moved;
}

Result<void> TopicConsumer::seek_to(std::string_view topic, std::uint32_t partition, SeekTo to) {
  Assignment* a = state_->find(topic, partition);
  if (a == nullptr)
    return Error{Errc::kFailedPrecondition, "partition " + std::to_string(partition) + " of topic '" + std::string(topic) + "' is not assigned"};
  state_->polled.clear();  // a seek ends the last poll's views
  a->skip_below = Offset{-1};
  a->pending.reset();
  a->cold.reset();
  const Ring ring = a->memory.ring;
  // Where the partition has a log, positions before the ring's window are read from it.
  auto cold_at = [&](Offset offset) -> Result<bool> {
    if (a->no_log) return false;
    return state_->go_cold(*a, offset, false);
  };
  auto attach = [&](StartAt at) -> Result<void> {
    a->consumer.reset();  // frees its slot before taking one
    WEFT_TRY(Consumer c, Consumer::attach(ring, at));
    a->consumer.emplace(std::move(c));
    return ok();
  };
  const auto end_offset = [&] {
    return Offset{static_cast<std::int64_t>(std::atomic_ref<std::uint64_t>(ring.control().claim.tail.offset).load(std::memory_order_acquire))};
  };
  switch (to.kind) {
    case SeekTo::Kind::kCommitted: {
      WEFT_TRY(const std::optional<Offset> committed, this->committed(topic, partition));
      const SeekTo otherwise{to.otherwise == SeekTo::Kind::kEarliest ? SeekTo::Kind::kEarliest : SeekTo::Kind::kLatest, 0};
      if (!committed) return seek(topic, partition, otherwise);
      Result<void> at = seek(topic, partition, SeekTo::offset(committed->value));
      if (!at.ok() && at.error().code == Errc::kOutOfRange) return seek(topic, partition, otherwise);  // deleted or past the end
      return at;
    }
    case SeekTo::Kind::kEarliest: {
      WEFT_TRY(const bool cold, cold_at(kEarliestOffset));
      if (cold) return ok();
      return attach(StartAt::kEarliest);
    }
    case SeekTo::Kind::kLatest: return attach(StartAt::kLatest);
    case SeekTo::Kind::kOffset: {
      const Offset end = end_offset();
      if (to.value > end.value || to.value < 0)
        return Error{Errc::kOutOfRange, "offset " + std::to_string(to.value) + " is past the end of partition " +
                                            std::to_string(partition) + " (the next offset is " + std::to_string(end.value) + ")"};
      if (Offset{to.value} < ring.reuse_limit().offset) {
        Result<bool> cold = cold_at(Offset{to.value});
        if (!cold.ok() && cold.error().code == Errc::kOutOfRange) {
          // Seeking before the log's start is the caller's mistake: say so rather than move on.
          Result<LogSlice> earliest = state_->client->open_log_slice(a->topic, partition, kEarliestOffset);
          a->cold.reset();
          return Error{Errc::kOutOfRange, "offset " + std::to_string(to.value) + " of partition " + std::to_string(partition) +
                                              " was deleted by retention; the earliest offset is " +
                                              (earliest.ok() ? std::to_string(earliest->offset.value) : std::string("unknown"))};
        }
        WEFT_TRY(const bool is_cold, std::move(cold));
        if (is_cold) {
          a->skip_below = Offset{to.value};
          return ok();
        }
      }
      if (!a->consumer) WEFT_TRY_VOID(attach(StartAt::kEarliest));
      Result<void> in_ring = a->consumer->seek(Offset{to.value});
      if (!in_ring.ok() && in_ring.error().code == Errc::kOutOfRange && !a->no_log) {
        // The ring moved on between the look at its limit and the walk: the log has it.
        WEFT_TRY(const bool is_cold, cold_at(Offset{to.value}));
        if (is_cold) {
          a->skip_below = Offset{to.value};
          return ok();
        }
      }
      WEFT_TRY_VOID(std::move(in_ring));
      a->skip_below = Offset{to.value};
      return ok();
    }
    case SeekTo::Kind::kTimestamp: {
      if (!a->no_log) {
        // The log's time index first; only what the log does not hold yet is looked for in the ring.
        Result<Offset> found = state_->client->log_offset_for_timestamp(a->topic, partition, to.value);
        if (found.ok()) return seek(topic, partition, SeekTo::offset(found->value));
        if (found.error().code == Errc::kUnsupported) a->no_log = true;
        else if (found.error().code != Errc::kNotFound) return std::move(found).error();
      }
      // The earliest offset whose timestamp is at or after the target (Kafka's ListOffsets):
      // walk the ring's batches by their max timestamp, then the records of the one that holds it.
      WEFT_TRY_VOID(attach(StartAt::kEarliest));
      Consumer& c = *a->consumer;
      WEFT_TRY(const std::optional<TimedOffset> found, find_in_ring_by_timestamp(c, to.value, state_->decompressor, ring.capacity_bytes()));
      if (found) {
        WEFT_TRY_VOID(c.seek(found->offset));
        a->skip_below = found->offset;
        return ok();
      }
      return attach(StartAt::kLatest);  // no record that late yet: wait for the next one
    }
  }
  return ok();
}

Result<Offset> TopicConsumer::position(std::string_view topic, std::uint32_t partition) const {
  Assignment* a = state_->find(topic, partition);
  if (a == nullptr || (!a->consumer && !a->cold))
    return Error{Errc::kFailedPrecondition, "partition " + std::to_string(partition) + " of topic '" + std::string(topic) + "' is not assigned"};
  if (a->pending || a->cold) return a->skip_below;  // the rest of a batch the last poll cut short, or the log's next
  // The ring's next offset is a batch's start; a seek into that batch returns nothing before
  // skip_below, so that is where the consumer stands (and what a commit saves).
  return std::max(a->consumer->next_offset(), a->skip_below);
}

Result<void> TopicConsumer::commit() {
  std::vector<CommittedOffset> offsets;
  for (const Assignment& a : state_->assignments) {
    WEFT_TRY(const Offset next, position(a.topic, a.partition));
    offsets.push_back(CommittedOffset{a.topic, a.partition, next, {}, 0});
  }
  if (state_->options.group.empty()) return Error{Errc::kFailedPrecondition, "commit: the consumer has no group (ConsumerOptions::group)"};
  return state_->client->commit_offsets(state_->options.group, offsets);
}

Result<void> TopicConsumer::commit(std::string_view topic, std::uint32_t partition, Offset next) {
  if (state_->options.group.empty()) return Error{Errc::kFailedPrecondition, "commit: the consumer has no group (ConsumerOptions::group)"};
  const CommittedOffset offset{std::string(topic), partition, next, {}, 0};
  return state_->client->commit_offsets(state_->options.group, std::span<const CommittedOffset>(&offset, 1));
}

Result<std::optional<Offset>> TopicConsumer::committed(std::string_view topic, std::uint32_t partition) const {
  if (state_->options.group.empty()) return Error{Errc::kFailedPrecondition, "committed: the consumer has no group (ConsumerOptions::group)"};
  WEFT_TRY(const std::vector<CommittedOffset> offsets, state_->client->fetch_offsets(state_->options.group, topic));
  for (const CommittedOffset& o : offsets)
    if (o.partition == partition) return std::optional<Offset>(o.offset);
  return std::optional<Offset>();
}

bool TopicConsumer::views_intact() const noexcept {
  const auto& polled = state_->polled;
  for (std::size_t i = 0; i < polled.size(); ++i) {
    if (!polled[i].from->consumer || !polled[i].from->consumer->validate(polled[i].batch)) return false;
  }
  return true;
}

Result<PollResult> TopicConsumer::poll(std::int64_t timeout_ms) {
  State& s = *state_;
  s.records.clear();
  s.notices.clear();
  s.polled.clear();
  s.reuse_inflated();
  if (s.assignments.empty()) return Error{Errc::kFailedPrecondition, "poll: no partitions assigned (call assign first)"};
  if (s.deferred) {
    Error error = std::move(*s.deferred);
    s.deferred.reset();
    return error;
  }
  std::int64_t deadline = -1;  // read the clock only when there is nothing to return at once
  const std::size_t n = s.assignments.size();

  std::optional<Error> failure;  // reading the log failed: the poll returns it
  Assignment* deleted = nullptr;  // gone (its topic deleted, or lost its place): unassigned as the poll returns the failure
  auto fail = [&] {
    if (deleted != nullptr) s.unassign(deleted);
    return std::move(*failure);
  };
  // When the node retired the ring `a` reads (a replica's truncation replaced it, or its topic
  // was deleted): reads on in the partition's ring now from the same offset, or gives the
  // partition up. One load of the read-mostly mode line otherwise.
  auto leave_retired_ring = [&](Assignment& a) {
    if (leader_epoch(a.memory.ring) != ring_layout::kRetired) [[likely]]
      return;
    // This poll's records and notices point into the assignments and the old ring: next poll.
    if (!s.records.empty() || !s.polled.empty() || !s.notices.empty()) return;
    const std::string where = "topic '" + a.topic + "' partition " + std::to_string(a.partition);
    Result<PartitionMemory> reopened = s.client->open_partition(a.topic, a.partition);
    if (reopened.ok() && reopened->topic_id == a.memory.topic_id) {
      if (leader_epoch(reopened->ring) == ring_layout::kRetired) return;  // not replaced yet: look again later
      Result<Offset> next = position(a.topic, a.partition);
      if (!next.ok()) {
        failure = std::move(next).error();
        return;
      }
      // The old ring's reader and views first: the old memory may go with the assignment's hold.
      a.consumer.reset();
      a.pending.reset();
      a.cold.reset();
      a.memory = std::move(*reopened);
      a.visible_end = Offset{0};  // the new ring's high watermark, read afresh
      Result<void> moved = seek(a.topic, a.partition, SeekTo::offset(next->value));
      if (!moved.ok() && moved.error().code == Errc::kOutOfRange && !a.no_log && *next < a.memory.ring.reuse_limit().offset) {
        // Below the log's start now (a replica reset to its leader's start): as after retention,
        // a kOutOfRange notice and the log's start.
        if (Result<bool> cold = s.go_cold(a, *next); cold.ok() && *cold) return;
      }
      if (!moved.ok()) {
        // Not left wherever seek's fallback put it: the caller assigns it again where it wants.
        failure = Error{moved.error().code, where + " is no longer assigned: its ring was replaced (its log was cut back to the new leader's) and reading on from offset " +
                                                std::to_string(next->value) + " failed: " + moved.error().message};
        deleted = &a;
      }
      return;
    }
    if (!reopened.ok() && reopened.error().code != Errc::kNotFound) {
      failure = std::move(reopened).error();
      return;
    }
    failure = Error{Errc::kNotFound, where + " is no longer assigned: the topic was deleted" +
                                         std::string(reopened.ok() ? " (a topic made again under its name is another: assign it to read it)" : "")};
    deleted = &a;
  };
  // Producers overwrote what `a` was reading: what this poll took of it goes, and it reads on
  // from the log (or the ring's oldest intact batch) at the oldest record lost, else `otherwise`.
  // False when that partition has nothing more now.
  auto overrun = [&](Assignment& a, Offset otherwise) {
    const State::Dropped missed = s.drop_polled(a, otherwise);
    if (Result<void> moved = s.lapped(a, missed); !moved.ok()) {
      failure = std::move(moved).error();
      return false;
    }
    return a.consumer.has_value();  // none: reading the log
  };
  // Handles one poll status of assignment `a`; false when that partition has nothing more now.
  auto handle = [&](Assignment& a, PollStatus status, const RingBatch& batch) {
    Consumer& c = *a.consumer;
    switch (status) {
      case PollStatus::kOk: {
        if (beyond_high_watermark(a, last_offset_of(batch))) {
          a.pending = batch;  // read once the in-sync replicas all hold it
          a.skip_below = std::max(a.skip_below, batch.base_offset);  // where a lapped read resumes
          return false;
        }
        if (!s.take(a, batch)) {
          // Overwritten while it was decoded: the records are in the log, not corrupt.
          if (!c.validate(batch)) return overrun(a, std::max(batch.base_offset, a.skip_below));
          s.notices.push_back(PollNotice{PollNotice::Kind::kCorrupt, a.topic, a.partition, batch.base_offset,
                                         Offset{batch.base_offset.value + batch.records}});
          return true;
        }
        // The oldest batch of a partition's run decides whether the run is intact (producers
        // overwrite in position order), so only that one is kept.
        if (s.polled.empty() || s.polled.back().from != &a) {
          s.polled.push_back(State::Polled{&a, batch});
          c.hold(batch.position);  // its views are in use until the next poll
        }
        return true;
      }
      case PollStatus::kLapped:
        if (leader_epoch(a.memory.ring) == ring_layout::kRetired) {
          // Its log may have gone with its topic, or be a new topic's by now: the ring is left
          // as an empty one is (the partition's new ring from the same offset, or given up).
          leave_retired_ring(a);
          return false;
        }
        // What this poll already took from the partition is older still, so overwritten too.
        return overrun(a, c.lapped_offset());
      case PollStatus::kCorrupt: {
        // A frame written by another process makes no sense: skip to the oldest intact one.
        const Offset from = c.next_offset();
        const Offset resumed = c.rejoin();
        s.notices.push_back(PollNotice{PollNotice::Kind::kCorrupt, a.topic, a.partition, from, resumed});
        return false;
      }
      case PollStatus::kEmpty:
        leave_retired_ring(a);
        return false;
    }
    return false;
  };

  for (Assignment& a : s.assignments)
    if (a.consumer) a.consumer->release_hold();  // the last poll's views end here
  // A reader that found its one partition drained last time waits first (the ring pauses before
  // it looks), rather than looking at once at the frame a producer is writing.
  bool look_first = !(n == 1 && timeout_ms > 0 && s.assignments.front().caught_up && !s.assignments.front().pending);
  for (;; look_first = true) {
    // Round-robin from where the last poll stopped, so one busy partition starves none.
    // (No `%`: a 64-bit division costs more than the rest of a one-record poll.)
    std::size_t index = s.next_assignment;
    for (std::size_t k = 0; look_first && k < n && !s.full(); ++k, index = index + 1 == n ? 0 : index + 1) {
      Assignment& a = s.assignments[index];
      if (a.cold) {
        // The log it reads may have gone with its topic, or been cut back.
        leave_retired_ring(a);
        if (failure) return fail();
      }
      if (a.cold) {
        Result<bool> hot = s.poll_cold(a);
        if (!hot.ok()) {
          // What other partitions gave this poll goes out; the error comes with the next poll.
          if (s.records.empty()) return std::move(hot).error();
          s.deferred = std::move(hot).error();
          break;
        }
        if (!*hot) continue;
      }
      if (!a.consumer) continue;  // neither cold nor in the ring: a failed seek left it unpositioned
      if (a.pending) {
        // The rest of a batch the last poll cut short, unless producers overwrote it meanwhile.
        const RingBatch rest = *a.pending;
        if (a.consumer->validate(rest)) {
          a.pending.reset();
          handle(a, PollStatus::kOk, rest);
          if (a.pending) {  // still past the high watermark (or cut short again), for good if retired
            leave_retired_ring(a);
            if (failure) return fail();
            continue;
          }
        } else if (!overrun(a, a.skip_below) && failure) {
          // What other partitions gave this poll goes out; the error comes with the next poll.
          if (s.records.empty()) return fail();
          s.deferred = std::move(*failure);
          failure.reset();
          break;
        } else {
          continue;
        }
      }
      RingBatch batch;
      const std::size_t before = s.records.size();
      PollStatus status = PollStatus::kOk;
      while (!s.full()) {
        status = a.consumer->poll(batch);
        if (!handle(a, status, batch)) break;
      }
      if (failure) {
        if (s.records.empty()) return fail();
        s.deferred = std::move(*failure);
        failure.reset();
        break;
      }
      if (!a.consumer) continue;  // lapped: reading the log now
      // Drained right after data (taken in this pass or by the wait that led to it).
      a.caught_up = status == PollStatus::kEmpty && (s.records.size() > before || !s.polled.empty());
      if (a.caught_up) a.consumer->mark_caught_up();
    }
    s.next_assignment = s.next_assignment + 1 == n ? 0 : s.next_assignment + 1;
    if (!s.records.empty() || !s.notices.empty() || timeout_ms <= 0) break;
    const std::int64_t now = monotonic_ns();
    // Saturating: a "forever" timeout of INT64_MAX ms must not overflow into the past.
    if (deadline < 0) deadline = now + std::min<std::int64_t>(timeout_ms, std::int64_t{1} << 40) * 1'000'000;
    if (now >= deadline) break;
    if (Assignment& next = s.assignments[s.next_assignment]; next.pending && next.consumer) {
      // A batch waits for the high watermark: sleep on it (the ring holds the batch already).
      const std::int64_t slice = n == 1 ? deadline - now : std::min<std::int64_t>(deadline - now, 1'000'000);
      (void)wait_for_visible(next.memory.ring, Offset{last_offset_of(*next.pending).value + 1}, now + slice);
    } else if (n == 1 && s.assignments.front().consumer && !s.assignments.front().cold) {
      // One partition: the ring's own wait (spin, yield or futex park) until data or the deadline.
      Assignment& a = s.assignments.front();
      RingBatch batch;
      const PollStatus status = a.consumer->wait(batch, s.options.wait, deadline - now);
      handle(a, status, batch);
      if (failure) return fail();
    } else if (s.options.wait == WaitKind::kPark && s.assignments[s.next_assignment].consumer && !s.assignments[s.next_assignment].cold) {
      // A futex waits on one ring; with several, sleep in short slices on the first.
      Assignment& a = s.assignments[s.next_assignment];
      RingBatch batch;
      handle(a, a.consumer->wait(batch, WaitKind::kPark, std::min<std::int64_t>(deadline - now, 1'000'000)), batch);
      if (failure) return fail();
    } else if (s.options.wait == WaitKind::kYield || s.options.wait == WaitKind::kPark) {
      sched_yield();
    }
  }
  // Views that were overwritten while being decoded are dropped and reported as lapped. Producers
  // overwrite in position order, so each run's oldest batch answers for the run.
  for (std::size_t i = 0; i < s.polled.size(); ++i) {
    const State::Polled& p = s.polled[i];
    if (p.from->consumer->validate(p.batch)) continue;
    Assignment& from = *p.from;  // `p` moves when drop_polled erases
    if (!overrun(from, from.consumer->next_offset()) && failure) {
      // The other partitions' records still go out (their consumers moved past them); the error
      // comes with the next poll.
      if (s.records.empty()) return fail();
      if (!s.deferred) s.deferred = std::move(*failure);
      failure.reset();
    }
    i = static_cast<std::size_t>(-1);  // start over: the list changed
  }
  return PollResult{s.records, s.notices};
}

}  // namespace weft

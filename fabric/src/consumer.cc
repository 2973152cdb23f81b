#include "weft/consumer.h"

#include <sched.h>

#include <deque>
#include <optional>

namespace weft {
namespace {

struct Assignment {
  std::string topic;  // stable: records' topic views point here (assignments live in a deque)
  std::uint32_t partition = 0;
  PartitionMemory memory;
  std::optional<Consumer> consumer;
  Offset skip_below{-1};  // after a seek into the middle of a batch: its earlier records are not returned
  bool caught_up = false;  // the last poll drained this partition
  // A batch that max_poll_records cut short (the ring consumer is past it): its records from
  // skip_below on come first in the next poll.
  std::optional<RingBatch> pending{};
};

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

  Assignment* find(std::string_view topic, std::uint32_t partition) {
    for (Assignment& a : assignments)
      if (a.partition == partition && a.topic == topic) return &a;
    return nullptr;
  }

  // Forgets what this poll took from `a` (it was overwritten); returns the first offset lost, or
  // `otherwise` when nothing was taken.
  Offset drop_polled(Assignment& a, Offset otherwise) {
    a.pending.reset();  // older than what was overwritten, so overwritten too
    Offset first = otherwise;
    for (const Polled& p : polled)
      if (p.from == &a) {
        first = p.batch.base_offset;
        break;
      }
    std::erase_if(records, [&](const ConsumedRecord& r) { return r.partition == a.partition && r.topic.data() == a.topic.data(); });
    std::erase_if(polled, [&](const Polled& p) { return p.from == &a; });
    return first;
  }

  // Appends a batch's records, up to max_poll_records (the rest is left pending); false (records
  // untouched) when the batch is malformed.
  bool take(Assignment& a, const RingBatch& batch) {
    const std::size_t before = records.size();
    auto add = [&](const RecordView& r) {
      if (r.offset < a.skip_below) return true;
      if (records.size() >= options.max_poll_records) {
        a.pending = batch;
        a.skip_below = r.offset;
        return false;
      }
      // Built in place (parenthesised aggregate initialisation): no temporary to copy.
      records.emplace_back(a.topic, a.partition, r.offset, r.timestamp_ms, r.key, r.value, r.header_count, r.headers_bytes);
      return true;
    };
    RecordView& r = scratch;  // reused: value-initialising a RecordView per batch shows in profiles
    if (batch.records == 1 && !options.check_crcs && decode_single_record_batch(batch.bytes, r)) {
      add(r);
    } else {
      Result<BatchView> view = BatchView::parse_header(batch.bytes, options.check_crcs);
      if (!view.ok()) return false;
      RecordReader reader(*view);
      while (reader.next(r) && add(r)) {
      }
      if (reader.failed()) {
        records.resize(before);
        return false;
      }
    }
    return true;
  }
};

TopicConsumer::TopicConsumer(std::unique_ptr<State> state) : state_(std::move(state)) {}
TopicConsumer::TopicConsumer(TopicConsumer&&) noexcept = default;
TopicConsumer& TopicConsumer::operator=(TopicConsumer&&) noexcept = default;
TopicConsumer::~TopicConsumer() = default;

Result<TopicConsumer> TopicConsumer::create(std::shared_ptr<Client> client, ConsumerOptions options) {
  if (!client) return Error{Errc::kInvalidArgument, "consumer: no client"};
  if (options.max_poll_records == 0) return Error{Errc::kInvalidArgument, "consumer: max_poll_records must be at least 1"};
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
    state_->assignments.push_back(Assignment{info.name, p, std::move(memory), std::nullopt});
    if (Result<void> positioned = seek(topic, p, start); !positioned.ok()) {
      state_->assignments.pop_back();
      return positioned;
    }
  }
  return ok();
}

Result<void> TopicConsumer::seek(std::string_view topic, std::uint32_t partition, SeekTo to) {
  Assignment* a = state_->find(topic, partition);
  if (a == nullptr)
    return Error{Errc::kFailedPrecondition, "partition " + std::to_string(partition) + " of topic '" + std::string(topic) + "' is not assigned"};
  state_->polled.clear();  // a seek ends the last poll's views
  a->skip_below = Offset{-1};
  a->pending.reset();
  const Ring ring = a->memory.ring;
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
    case SeekTo::Kind::kEarliest: return attach(StartAt::kEarliest);
    case SeekTo::Kind::kLatest: return attach(StartAt::kLatest);
    case SeekTo::Kind::kOffset: {
      const Offset end = end_offset();
      if (to.value > end.value)
        return Error{Errc::kOutOfRange, "offset " + std::to_string(to.value) + " is past the end of partition " +
                                            std::to_string(partition) + " (the next offset is " + std::to_string(end.value) + ")"};
      if (!a->consumer) WEFT_TRY_VOID(attach(StartAt::kEarliest));
      WEFT_TRY_VOID(a->consumer->seek(Offset{to.value}));
      a->skip_below = Offset{to.value};
      return ok();
    }
    case SeekTo::Kind::kTimestamp: {
      // The earliest offset whose timestamp is at or after the target (Kafka's ListOffsets):
      // walk the ring's batches by their max timestamp, then the records of the one that holds it.
      WEFT_TRY_VOID(attach(StartAt::kEarliest));
      Consumer& c = *a->consumer;
      RingBatch batch;
      for (std::size_t steps = 0; steps < ring.capacity_bytes(); ++steps) {
        const PollStatus status = c.poll(batch);
        if (status == PollStatus::kEmpty) break;
        if (status == PollStatus::kLapped) {
          c.rejoin();
          continue;
        }
        if (status != PollStatus::kOk) return Error{Errc::kCorrupt, "partition " + std::to_string(partition) + ": corrupt frame while seeking"};
        Result<BatchView> view = BatchView::parse_header(batch.bytes, false);
        if (!view.ok() || view->max_timestamp() < to.value) continue;
        RecordReader reader(*view);
        RecordView r;
        Offset found = view->last_offset();
        while (reader.next(r))
          if (r.timestamp_ms >= to.value) {
            found = r.offset;
            break;
          }
        if (!c.validate(batch)) {  // overwritten while read: start again from the oldest
          c.rejoin();
          continue;
        }
        WEFT_TRY_VOID(c.seek(found));
        a->skip_below = found;
        return ok();
      }
      return attach(StartAt::kLatest);  // no record that late yet: wait for the next one
    }
  }
  return ok();
}

Result<Offset> TopicConsumer::position(std::string_view topic, std::uint32_t partition) const {
  Assignment* a = state_->find(topic, partition);
  if (a == nullptr || !a->consumer)
    return Error{Errc::kFailedPrecondition, "partition " + std::to_string(partition) + " of topic '" + std::string(topic) + "' is not assigned"};
  if (a->pending) return a->skip_below;  // the rest of a batch the last poll cut short
  return a->consumer->next_offset();
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
  if (s.assignments.empty()) return Error{Errc::kFailedPrecondition, "poll: no partitions assigned (call assign first)"};
  const std::size_t max = s.options.max_poll_records;
  std::int64_t deadline = -1;  // read the clock only when there is nothing to return at once
  const std::size_t n = s.assignments.size();

  // Handles one poll status of assignment `a`; false when that partition has nothing more now.
  auto handle = [&](Assignment& a, PollStatus status, const RingBatch& batch) {
    Consumer& c = *a.consumer;
    switch (status) {
      case PollStatus::kOk: {
        if (!s.take(a, batch)) {
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
      case PollStatus::kLapped: {
        // What this poll already took from the partition is older still, so overwritten too.
        const Offset missed = s.drop_polled(a, c.lapped_offset());
        const Offset resumed = c.rejoin();
        s.notices.push_back(PollNotice{PollNotice::Kind::kLapped, a.topic, a.partition, missed, resumed});
        return true;
      }
      case PollStatus::kCorrupt: {
        // A frame written by another process makes no sense: skip to the oldest intact one.
        const Offset from = c.next_offset();
        const Offset resumed = c.rejoin();
        s.notices.push_back(PollNotice{PollNotice::Kind::kCorrupt, a.topic, a.partition, from, resumed});
        return false;
      }
      case PollStatus::kEmpty: return false;
    }
    return false;
  };

  for (Assignment& a : s.assignments) a.consumer->release_hold();  // the last poll's views end here
  // A reader that found its one partition drained last time waits first (the ring pauses before
  // it looks), rather than looking at once at the frame a producer is writing.
  bool look_first = !(n == 1 && timeout_ms > 0 && s.assignments.front().caught_up && !s.assignments.front().pending);
  for (;; look_first = true) {
    // Round-robin from where the last poll stopped, so one busy partition starves none.
    // (No `%`: a 64-bit division costs more than the rest of a one-record poll.)
    std::size_t index = s.next_assignment;
    for (std::size_t k = 0; look_first && k < n && s.records.size() < max; ++k, index = index + 1 == n ? 0 : index + 1) {
      Assignment& a = s.assignments[index];
      if (a.pending) {
        // The rest of a batch the last poll cut short, unless producers overwrote it meanwhile.
        const RingBatch rest = *a.pending;
        if (a.consumer->validate(rest)) {
          a.pending.reset();
          handle(a, PollStatus::kOk, rest);
        } else {
          const Offset missed = s.drop_polled(a, a.skip_below);
          const Offset resumed = a.consumer->rejoin();
          s.notices.push_back(PollNotice{PollNotice::Kind::kLapped, a.topic, a.partition, missed, resumed});
        }
      }
      RingBatch batch;
      const std::size_t before = s.records.size();
      PollStatus status = PollStatus::kOk;
      while (s.records.size() < max) {
        status = a.consumer->poll(batch);
        if (!handle(a, status, batch)) break;
      }
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
    if (n == 1) {
      // One partition: the ring's own wait (spin, yield or futex park) until data or the deadline.
      Assignment& a = s.assignments.front();
      RingBatch batch;
      const PollStatus status = a.consumer->wait(batch, s.options.wait, deadline - now);
      handle(a, status, batch);
    } else if (s.options.wait == WaitKind::kPark) {
      // A futex waits on one ring; with several, sleep in short slices on the first.
      Assignment& a = s.assignments[s.next_assignment];
      RingBatch batch;
      handle(a, a.consumer->wait(batch, WaitKind::kPark, std::min<std::int64_t>(deadline - now, 1'000'000)), batch);
    } else if (s.options.wait == WaitKind::kYield) {
      sched_yield();
    }
  }
  // Views that were overwritten while being decoded are dropped and reported as lapped. Producers
  // overwrite in position order, so each run's oldest batch answers for the run.
  for (std::size_t i = 0; i < s.polled.size(); ++i) {
    const State::Polled& p = s.polled[i];
    if (p.from->consumer->validate(p.batch)) continue;
    Assignment& from = *p.from;  // `p` moves when drop_polled erases
    const Offset missed = s.drop_polled(from, from.consumer->next_offset());
    const Offset resumed = from.consumer->rejoin();
    s.notices.push_back(PollNotice{PollNotice::Kind::kLapped, from.topic, from.partition, missed, resumed});
    i = static_cast<std::size_t>(-1);  // start over: the list changed
  }
  return PollResult{s.records, s.notices};
}

}  // namespace weft

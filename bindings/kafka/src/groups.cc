// The Broker's consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
// LeaveGroup, ListGroups, DescribeGroups (membership, in the GroupCoordinator) and OffsetCommit,
// OffsetFetch (committed offsets, in the node's durable offset store).

#include <algorithm>
#include <memory>
#include <set>

#include "broker.h"
#include "weft/fabric/log.h"
#include "weft/fabric/offset_store.h"

namespace weft::kafka::detail {

namespace {

constexpr std::int32_t kNullAuthorizedOperations = INT32_MIN;
constexpr std::int8_t kCoordinatorGroup = 0;
// Protocols one JoinGroup may list (clients list their assignors: one to three). Kafka sets no
// bound, but the coordinator compares every member's list with every other's: ~10¹² string
// comparisons for a request of a million names (a count, not a measurement), all on the loop.
constexpr std::int32_t kMaxJoinProtocols = 64;

std::optional<std::string> owned(const std::optional<std::string_view>& s) {
  return s ? std::optional<std::string>(std::string(*s)) : std::nullopt;
}

std::optional<std::string_view> view(const std::optional<std::string>& s) {
  return s ? std::optional<std::string_view>(*s) : std::nullopt;
}

}  // namespace

std::int16_t Broker::group_code(GroupError e) const noexcept {
  switch (e) {
    case GroupError::kNone: return error::kNone;
    case GroupError::kUnknownMemberId: return error::kUnknownMemberId;
    case GroupError::kIllegalGeneration: return error::kIllegalGeneration;
    case GroupError::kRebalanceInProgress: return error::kRebalanceInProgress;
    case GroupError::kInconsistentGroupProtocol: return error::kInconsistentGroupProtocol;
    case GroupError::kInvalidSessionTimeout: return error::kInvalidSessionTimeout;
    case GroupError::kMemberIdRequired: return error::kMemberIdRequired;
    case GroupError::kGroupMaxSizeReached: return error::kGroupMaxSizeReached;
    case GroupError::kFencedInstanceId: return error::kFencedInstanceId;
    case GroupError::kInvalidGroupId: return error::kInvalidGroupId;
    case GroupError::kGroupIdNotFound: return error::kGroupIdNotFound;
    case GroupError::kNonEmptyGroup: return error::kNonEmptyGroup;
    case GroupError::kCoordinatorNotAvailable: return error::kCoordinatorNotAvailable;
    case GroupError::kNotCoordinator: return error::kNotCoordinator;
  }
  return error::kUnknownServerError;
}

Outcome Broker::find_coordinator(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  std::vector<std::string> keys;
  std::int8_t key_type = kCoordinatorGroup;
  if (v <= 3) keys.push_back(std::string(in.string(flex)));
  if (v >= 1) key_type = in.i8();
  if (v >= 4) {
    const std::int32_t n = in.array(flex, false, 1);
    for (std::int32_t i = 0; i < n && in.ok(); ++i) keys.push_back(std::string(in.string(flex)));
  }
  in.tagged_fields(flex);
  if (!in.ok()) return {};
  // A single node coordinates every group; a cluster's nodes agree on one per group. Transactions
  // have none.
  const std::int16_t err = key_type == kCoordinatorGroup ? error::kNone : error::kCoordinatorNotAvailable;
  const std::optional<std::string_view> message =
      err != 0 ? std::optional<std::string_view>("weft does not support transactions") : std::nullopt;
  const std::vector<BrokerAddress> listed = cluster_ != nullptr ? brokers() : std::vector<BrokerAddress>{};
  auto coordinator = [&](const std::string& key) {
    if (cluster_ != nullptr) {
      const NodeId id = cluster_->group_coordinator(key);
      for (const BrokerAddress& b : listed)
        if (b.id == id) return b;
    }
    return self_address();
  };
  Outcome out;
  out.error = err;
  Frame f(r.header);
  Writer& w = f.w;
  if (v >= 1) w.i32(0);
  if (v <= 3) {
    const BrokerAddress b = coordinator(keys.empty() ? std::string() : keys.front());
    w.i16(err);
    if (v >= 1) w.nullable_string(message, flex);
    w.i32(err == 0 ? b.id : -1);
    w.string(err == 0 ? b.host : "", flex);
    w.i32(err == 0 ? b.port : -1);
  } else {
    w.array(keys.size(), flex);
    for (const std::string& key : keys) {
      const BrokerAddress b = coordinator(key);
      w.string(key, flex);
      w.i32(err == 0 ? b.id : -1);
      w.string(err == 0 ? b.host : "", flex);
      w.i32(err == 0 ? b.port : -1);
      w.i16(err);
      w.nullable_string(message, flex);
      w.tagged_fields(flex);
    }
  }
  w.tagged_fields(flex);
  out.response = f.finish();
  return out;
}

Outcome Broker::join_group(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  JoinGroupRequest join;
  join.group_id = std::string(in.string(flex));
  join.session_timeout_ms = in.i32();
  join.rebalance_timeout_ms = v >= 1 ? in.i32() : join.session_timeout_ms;
  join.member_id = std::string(in.string(flex));
  if (v >= 5) join.group_instance_id = owned(in.nullable_string(flex));
  join.protocol_type = std::string(in.string(flex));
  const std::int32_t n = in.array(flex, false, 2);
  if (n > kMaxJoinProtocols)
    in.fail("JoinGroup lists " + std::to_string(n) + " protocols; at most " + std::to_string(kMaxJoinProtocols) + " are taken");
  for (std::int32_t i = 0; i < n && in.ok(); ++i) {
    GroupProtocol protocol;
    protocol.name = std::string(in.string(flex));
    const std::span<const std::byte> metadata = in.bytes(flex);
    protocol.metadata.assign(reinterpret_cast<const char*>(metadata.data()), metadata.size());
    in.tagged_fields(flex);
    join.protocols.push_back(std::move(protocol));
  }
  if (v >= 8) (void)in.nullable_string(flex);  // reason
  in.tagged_fields(flex);
  if (!in.ok()) return {};
  join.client_id = std::string(r.header.client_id.value_or(""));
  join.client_host = std::string(r.client_host);
  join.require_known_member_id = v >= 4;

  auto parked = std::make_unique<Parked>();
  parked->kind = Parked::Kind::kGroup;
  parked->header = r.header;
  parked->arrived_ns = r.arrived_ns;
  parked->group_reply = std::make_shared<std::optional<std::vector<OutChunk>>>();
  const RequestHeader header = r.header;
  std::weak_ptr<std::optional<std::vector<OutChunk>>> reply = parked->group_reply;
  groups_.join(std::move(join), now_ms(), [this, header, v, flex, reply](JoinGroupResult result) {
    std::shared_ptr<std::optional<std::vector<OutChunk>>> slot = reply.lock();
    if (!slot) return;  // the connection closed meanwhile
    Frame f(header);
    Writer& w = f.w;
    if (v >= 2) w.i32(0);
    w.i16(group_code(result.error));
    w.i32(result.generation);
    if (v >= 7) w.nullable_string(result.protocol_type.empty() ? std::nullopt : std::optional<std::string_view>(result.protocol_type), flex);
    if (v >= 7) w.nullable_string(result.protocol_name.empty() ? std::nullopt : std::optional<std::string_view>(result.protocol_name), flex);
    else w.string(result.protocol_name, flex);
    w.string(result.leader_id, flex);
    if (v >= 9) w.boolean(false);
    w.string(result.member_id, flex);
    w.array(result.members.size(), flex);
    for (const JoinGroupMember& m : result.members) {
      w.string(m.member_id, flex);
      if (v >= 5) w.nullable_string(view(m.group_instance_id), flex);
      w.bytes(m.metadata, flex);
      w.tagged_fields(flex);
    }
    w.tagged_fields(flex);
    *slot = f.finish();
  });
  Outcome out = resume(*parked, r.arrived_ns);
  if (out.kind == Outcome::Kind::kParked) out.parked = std::move(parked);
  return out;
}

Outcome Broker::sync_group(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  SyncGroupRequest sync;
  sync.group_id = std::string(in.string(flex));
  sync.generation = in.i32();
  sync.member_id = std::string(in.string(flex));
  if (v >= 3) sync.group_instance_id = owned(in.nullable_string(flex));
  if (v >= 5) {
    sync.protocol_type = owned(in.nullable_string(flex));
    sync.protocol_name = owned(in.nullable_string(flex));
  }
  const std::int32_t n = in.array(flex, false, 2);
  for (std::int32_t i = 0; i < n && in.ok(); ++i) {
    std::string member(in.string(flex));
    const std::span<const std::byte> assignment = in.bytes(flex);
    in.tagged_fields(flex);
    sync.assignments.emplace_back(std::move(member), std::string(reinterpret_cast<const char*>(assignment.data()), assignment.size()));
  }
  in.tagged_fields(flex);
  if (!in.ok()) return {};

  auto parked = std::make_unique<Parked>();
  parked->kind = Parked::Kind::kGroup;
  parked->header = r.header;
  parked->arrived_ns = r.arrived_ns;
  parked->group_reply = std::make_shared<std::optional<std::vector<OutChunk>>>();
  const RequestHeader header = r.header;
  std::weak_ptr<std::optional<std::vector<OutChunk>>> reply = parked->group_reply;
  groups_.sync(std::move(sync), now_ms(), [this, header, v, flex, reply](SyncGroupResult result) {
    std::shared_ptr<std::optional<std::vector<OutChunk>>> slot = reply.lock();
    if (!slot) return;
    Frame f(header);
    Writer& w = f.w;
    if (v >= 1) w.i32(0);
    w.i16(group_code(result.error));
    if (v >= 5) {
      w.nullable_string(result.protocol_type.empty() ? std::nullopt : std::optional<std::string_view>(result.protocol_type), flex);
      w.nullable_string(result.protocol_name.empty() ? std::nullopt : std::optional<std::string_view>(result.protocol_name), flex);
    }
    w.bytes(result.assignment, flex);
    w.tagged_fields(flex);
    *slot = f.finish();
  });
  Outcome out = resume(*parked, r.arrived_ns);
  if (out.kind == Outcome::Kind::kParked) out.parked = std::move(parked);
  return out;
}

Outcome Broker::heartbeat(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  const std::string_view group = in.string(flex);
  const std::int32_t generation = in.i32();
  const std::string_view member = in.string(flex);
  std::optional<std::string> instance;
  if (v >= 3) instance = owned(in.nullable_string(flex));
  in.tagged_fields(flex);
  if (!in.ok()) return {};
  const std::int16_t err = group_code(groups_.heartbeat(group, generation, member, instance, now_ms()));
  Outcome out;
  out.error = err;
  Frame f(r.header);
  if (v >= 1) f.w.i32(0);
  f.w.i16(err);
  f.w.tagged_fields(flex);
  out.response = f.finish();
  return out;
}

Outcome Broker::leave_group(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  const std::string_view group = in.string(flex);
  std::vector<LeavingMember> members;
  if (v <= 2) {
    members.push_back(LeavingMember{std::string(in.string(flex)), std::nullopt});
  } else {
    const std::int32_t n = in.array(flex, false, 2);
    for (std::int32_t i = 0; i < n && in.ok(); ++i) {
      LeavingMember m;
      m.member_id = std::string(in.string(flex));
      m.group_instance_id = owned(in.nullable_string(flex));
      if (v >= 5) (void)in.nullable_string(flex);
      in.tagged_fields(flex);
      members.push_back(std::move(m));
    }
  }
  in.tagged_fields(flex);
  if (!in.ok()) return {};
  const std::vector<GroupError> results = groups_.leave(group, members, now_ms());
  // A group-wide refusal (the id, or another node coordinates it) is the top-level error with no
  // member listed, as Kafka answers it (clients look for NOT_COORDINATOR there).
  std::int16_t group_error = 0;
  if (!validate_group_id(group).ok()) group_error = error::kInvalidGroupId;
  else if (!groups_.coordinates(group)) group_error = error::kNotCoordinator;
  Outcome out;
  Frame f(r.header);
  Writer& w = f.w;
  if (v >= 1) w.i32(0);
  std::int16_t top = group_error;
  if (v <= 2 && !results.empty()) top = group_code(results.front());
  w.i16(top);
  out.error = top;
  if (v >= 3 && group_error != 0) {
    w.array(0, flex);
  } else if (v >= 3) {
    w.array(members.size(), flex);
    for (std::size_t i = 0; i < members.size(); ++i) {
      w.string(members[i].member_id, flex);
      w.nullable_string(view(members[i].group_instance_id), flex);
      const std::int16_t err = i < results.size() ? group_code(results[i]) : error::kUnknownMemberId;
      if (err != 0 && out.error == 0) out.error = err;
      w.i16(err);
      w.tagged_fields(flex);
    }
  }
  w.tagged_fields(flex);
  out.response = f.finish();
  return out;
}

Outcome Broker::offset_commit(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  const std::string group(in.string(flex));
  std::int32_t generation = -1;
  std::string member;
  std::optional<std::string> instance;
  if (v >= 1) {
    generation = in.i32();
    member = std::string(in.string(flex));
  }
  if (v >= 7) instance = owned(in.nullable_string(flex));
  if (v >= 2 && v <= 4) (void)in.i64();  // retention time: offsets are kept until deleted
  using Part = CommitJob::Part;
  auto job = std::make_shared<CommitJob>();
  std::vector<std::pair<std::string, std::vector<Part>>>& topics = job->topics;
  std::vector<CommittedOffset>& commits = job->commits;
  std::vector<std::pair<std::size_t, std::size_t>>& commit_slots = job->slots;
  const std::int64_t now = wall_clock_ms();
  const std::int32_t n = in.array(flex, false, 2);
  for (std::int32_t t = 0; t < n && in.ok(); ++t) {
    const std::string_view name = in.string(flex);
    // The coordinator of a cluster's group may hold no replica of the topic: the cluster's record
    // says which partitions exist.
    std::size_t partition_count = 0;
    if (cluster_ != nullptr) {
      if (std::optional<TopicRecord> record = cluster_->topic(name)) partition_count = record->partitions;
    } else if (std::shared_ptr<TopicState> state = topic(name)) {
      partition_count = state->partitions.size();
    }
    topics.push_back({std::string(name), {}});
    const std::int32_t parts = in.array(flex, false, 14);
    for (std::int32_t i = 0; i < parts && in.ok(); ++i) {
      Part part{in.i32()};
      const std::int64_t offset = in.i64();
      if (v >= 6) (void)in.i32();
      std::int64_t timestamp = now;
      if (v == 1) {
        const std::int64_t given = in.i64();
        if (given >= 0) timestamp = given;
      }
      const std::optional<std::string_view> metadata = in.nullable_string(flex);
      in.tagged_fields(flex);
      if (!in.ok()) break;
      if (part.partition < 0 || static_cast<std::size_t>(part.partition) >= partition_count) {
        part.error = error::kUnknownTopicOrPartition;
      } else if (metadata && metadata->size() > kMaxOffsetMetadataBytes) {
        part.error = error::kOffsetMetadataTooLarge;
      } else if (offset < 0) {
        part.error = error::kInvalidRequest;  // "no offset" (-1): nothing to store
      } else {
        commits.push_back(CommittedOffset{std::string(name), static_cast<std::uint32_t>(part.partition), Offset{offset},
                                          std::string(metadata.value_or("")), timestamp});
        commit_slots.emplace_back(topics.size() - 1, topics.back().second.size());
      }
      topics.back().second.push_back(part);
    }
    in.tagged_fields(flex);
  }
  in.tagged_fields(flex);
  if (!in.ok()) return {};

  std::int16_t group_err = 0;
  if (!validate_group_id(group).ok()) group_err = error::kInvalidGroupId;
  else group_err = group_code(groups_.check_commit(group, generation, member, instance, now_ms()));
  if (group_err == 0 && !commits.empty()) {
    // Written off this thread; the request waits for it, parked.
    job->group = group;
    return park_for(r, std::move(job));
  }
  if (group_err != 0)
    for (const auto& [t, p] : commit_slots) topics[t].second[p].error = group_err;
  Outcome out;
  out.response = offset_commit_response(r.header, *job, out.error);
  return out;
}

std::vector<OutChunk> Broker::offset_commit_response(const RequestHeader& header, CommitJob& job, std::int16_t& first_error) {
  if (job.done.load(std::memory_order_acquire) && !job.result.ok()) {  // acquire: the committer's result
    log(LogLevel::kWarn, "kafka: offset commit failed", {{"group", job.group}, {"error", job.result.error().message}});
    const std::int16_t err = job.result.error().code == Errc::kNotFound ? error::kUnknownTopicOrPartition : error::kCoordinatorNotAvailable;
    for (const auto& [t, p] : job.slots) job.topics[t].second[p].error = err;
  }
  const std::int16_t v = header.api_version;
  const bool flex = header.flexible;
  Frame f(header);
  Writer& w = f.w;
  if (v >= 3) w.i32(0);
  w.array(job.topics.size(), flex);
  for (const auto& [name, parts] : job.topics) {
    w.string(name, flex);
    w.array(parts.size(), flex);
    for (const CommitJob::Part& p : parts) {
      w.i32(p.partition);
      w.i16(p.error);
      if (p.error != 0 && first_error == 0) first_error = p.error;
      w.tagged_fields(flex);
    }
    w.tagged_fields(flex);
  }
  w.tagged_fields(flex);
  return f.finish();
}

Outcome Broker::run_off_loop(const Request& r, SerialWorker& worker, std::shared_ptr<OffLoopJob> job, Parked::Kind kind) {
  worker.add([job, &node = node_] {
    job->run(node);
    job->done.store(true, std::memory_order_release);  // release: the job's outcome before the flag
  });
  Outcome out;
  out.kind = Outcome::Kind::kParked;
  out.parked = std::make_unique<Parked>();
  out.parked->kind = kind;
  out.parked->header = r.header;
  out.parked->arrived_ns = r.arrived_ns;
  return out;
}

SerialWorker& Broker::worker(Worker which) {
  std::unique_ptr<SerialWorker>& w = which == Worker::kOffsets ? offsets_worker_ : topics_worker_;
  if (!w) w = std::make_unique<SerialWorker>(which == Worker::kOffsets ? "weft-kafka-ofs" : "weft-kafka-adm", wake_fd_);
  return *w;
}

Outcome Broker::park_for(const Request& r, std::shared_ptr<CommitJob> job) {
  Outcome out = run_off_loop(r, worker(Worker::kOffsets), job, Parked::Kind::kCommit);
  out.parked->commit = std::move(job);
  return out;
}

Outcome Broker::park_for(const Request& r, Worker which, std::shared_ptr<DeferredJob> job) {
  Outcome out = run_off_loop(r, worker(which), job, Parked::Kind::kDeferred);
  out.parked->deferred = std::move(job);
  return out;
}

Outcome Broker::offset_fetch(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  struct GroupAsk {
    std::string group;
    std::optional<std::vector<std::pair<std::string, std::vector<std::int32_t>>>> topics;  // none: all
  };
  std::vector<GroupAsk> asks;
  auto read_topics = [&](GroupAsk& ask, bool nullable) {
    const std::int32_t n = in.array(flex, nullable, 2);
    if (n < 0) return;
    ask.topics.emplace();
    for (std::int32_t t = 0; t < n && in.ok(); ++t) {
      std::pair<std::string, std::vector<std::int32_t>> topic_ask{std::string(in.string(flex)), {}};
      const std::int32_t parts = in.array(flex, false, 4);
      for (std::int32_t i = 0; i < parts && in.ok(); ++i) topic_ask.second.push_back(in.i32());
      in.tagged_fields(flex);
      ask.topics->push_back(std::move(topic_ask));
    }
  };
  if (v <= 7) {
    GroupAsk ask;
    ask.group = std::string(in.string(flex));
    read_topics(ask, v >= 2);
    asks.push_back(std::move(ask));
  } else {
    const std::int32_t n = in.array(flex, false, 2);
    for (std::int32_t g = 0; g < n && in.ok(); ++g) {
      GroupAsk ask;
      ask.group = std::string(in.string(flex));
      read_topics(ask, true);
      in.tagged_fields(flex);
      asks.push_back(std::move(ask));
    }
  }
  if (v >= 7) (void)in.boolean();  // require stable: there are no transactions to wait for
  in.tagged_fields(flex);
  if (!in.ok()) return {};

  struct Answer {
    std::int32_t partition;
    std::int64_t offset = -1;
    std::string metadata;
    std::int16_t error = 0;
  };
  struct GroupAnswer {
    std::int16_t error = 0;
    bool fetch = false;  // the group's offsets are read on the worker
    Result<std::vector<CommittedOffset>> stored = std::vector<CommittedOffset>{};
    std::vector<std::pair<std::string, std::vector<Answer>>> topics;
  };
  struct Fetch {
    std::vector<GroupAsk> asks;
    std::vector<GroupAnswer> answers;
  };
  auto fetch = std::make_shared<Fetch>();
  fetch->asks = std::move(asks);
  fetch->answers.resize(fetch->asks.size());
  bool any = false;
  for (std::size_t g = 0; g < fetch->asks.size(); ++g) {
    const GroupAsk& ask = fetch->asks[g];
    GroupAnswer& answer = fetch->answers[g];
    if (!validate_group_id(ask.group).ok()) {
      answer.error = error::kInvalidGroupId;
      continue;
    }
    if (cluster_ != nullptr) {
      const NodeId coordinator = cluster_->group_coordinator(ask.group);
      if (coordinator >= 0 && coordinator != options_.node_id) {
        answer.error = error::kNotCoordinator;
        continue;
      }
    }
    answer.fetch = any = true;
  }

  // On the offsets' worker, after the commits before it: node_ only.
  auto read = [this, fetch] {
    for (std::size_t g = 0; g < fetch->asks.size(); ++g)
      if (fetch->answers[g].fetch) fetch->answers[g].stored = node_.fetch_offsets(fetch->asks[g].group, "");
  };
  auto respond = [fetch, header = owned_header(r), v, flex](std::int16_t& first_error) {
    for (std::size_t g = 0; g < fetch->asks.size(); ++g) {
      const GroupAsk& ask = fetch->asks[g];
      GroupAnswer& answer = fetch->answers[g];
      if (!answer.fetch) continue;
      std::vector<CommittedOffset> committed = answer.stored.ok() ? std::move(*answer.stored) : std::vector<CommittedOffset>{};
      if (!answer.stored.ok()) answer.error = error::kCoordinatorNotAvailable;
      const auto by_partition = [](const CommittedOffset& c, const std::pair<std::string_view, std::int64_t>& key) {
        return std::pair<std::string_view, std::int64_t>(c.topic, c.partition) < key;
      };
      if (ask.topics)
        std::sort(committed.begin(), committed.end(), [](const CommittedOffset& a, const CommittedOffset& b) {
          return std::pair<std::string_view, std::int64_t>(a.topic, a.partition) < std::pair<std::string_view, std::int64_t>(b.topic, b.partition);
        });
      if (!ask.topics) {
        for (const CommittedOffset& c : committed) {
          if (answer.topics.empty() || answer.topics.back().first != c.topic) answer.topics.push_back({c.topic, {}});
          answer.topics.back().second.push_back(Answer{static_cast<std::int32_t>(c.partition), c.offset.value, c.metadata, 0});
        }
      } else {
        for (const auto& topic_ask : *ask.topics) {
          const std::string& name = topic_ask.first;  // a plain reference: lambdas below capture it
          const std::vector<std::int32_t>& parts = topic_ask.second;
          answer.topics.push_back({name, {}});
          for (std::int32_t p : parts) {
            Answer a{p, -1, {}, 0};
            // Sorted above: a request may name a million partitions, against as many commits.
            const auto it = std::lower_bound(committed.begin(), committed.end(), std::pair<std::string_view, std::int64_t>(name, p), by_partition);
            if (it != committed.end() && it->topic == name && static_cast<std::int64_t>(it->partition) == p) {
              a.offset = it->offset.value;
              a.metadata = it->metadata;
            }
            answer.topics.back().second.push_back(std::move(a));
          }
        }
      }
    }

    if (v < 2) {
      // v0 and v1 have no group-level error: each partition asked says it, as Kafka answers.
      GroupAnswer& answer = fetch->answers.front();
      if (answer.error != error::kNone && fetch->asks.front().topics) {
        answer.topics.clear();
        for (const auto& [name, parts] : *fetch->asks.front().topics) {
          answer.topics.push_back({name, {}});
          for (const std::int32_t p : parts) answer.topics.back().second.push_back(Answer{p, -1, {}, answer.error});
        }
      }
    }

    Frame f(header);
    Writer& w = f.w;
    if (v >= 3) w.i32(0);
    auto write_topics = [&](const GroupAnswer& answer) {
      w.array(answer.topics.size(), flex);
      for (const auto& [name, parts] : answer.topics) {
        w.string(name, flex);
        w.array(parts.size(), flex);
        for (const Answer& a : parts) {
          w.i32(a.partition);
          w.i64(a.offset);
          if (v >= 5) w.i32(-1);  // committed leader epoch: not kept
          w.nullable_string(a.offset >= 0 ? std::optional<std::string_view>(a.metadata) : std::optional<std::string_view>(""), flex);
          w.i16(a.error);
          w.tagged_fields(flex);
        }
        w.tagged_fields(flex);
      }
    };
    if (v <= 7) {
      write_topics(fetch->answers.front());
      if (v >= 2) w.i16(fetch->answers.front().error);
      first_error = fetch->answers.front().error;
    } else {
      w.array(fetch->answers.size(), flex);
      for (std::size_t g = 0; g < fetch->answers.size(); ++g) {
        w.string(fetch->asks[g].group, flex);
        write_topics(fetch->answers[g]);
        w.i16(fetch->answers[g].error);
        if (fetch->answers[g].error != 0 && first_error == 0) first_error = fetch->answers[g].error;
        w.tagged_fields(flex);
      }
    }
    w.tagged_fields(flex);
    return f.finish();
  };
  return defer(r, Worker::kOffsets, any, std::move(respond), std::move(read));
}

// The coordinator keeps groups with members only; a group that emptied, or that only ever
// committed offsets (assign() with commits), lives on in the offset store, and Kafka lists and
// describes it as Empty. The store is read on the offsets' worker (its lock is held across a
// commit's fsync), the answer written back on the loop.
Outcome Broker::list_groups(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  std::vector<std::string> states;
  if (v >= 4) {
    const std::int32_t n = in.array(flex, false, 1);
    for (std::int32_t i = 0; i < n && in.ok(); ++i) states.push_back(std::string(in.string(flex)));
  }
  in.tagged_fields(flex);
  if (!in.ok()) return {};
  auto stored = std::make_shared<std::vector<std::string>>();
  auto read = [this, stored] {
    // A cluster's store too: a group committed through an earlier coordinator is there only.
    Result<std::vector<std::string>> all = node_.groups_with_offsets();
    *stored = all.ok() ? std::move(*all) : node_.list_groups();
  };
  auto respond = [this, stored, states = std::move(states), header = owned_header(r), v, flex](std::int16_t&) {
    std::vector<GroupListing> listed = groups_.list();
    std::set<std::string, std::less<>> known;
    for (const GroupListing& g : listed) known.insert(g.group_id);
    for (const std::string& id : *stored)
      if (!known.contains(id) && groups_.coordinates(id)) {
        const std::optional<GroupCoordinator::ForgottenGroup> f = groups_.forgotten(id);
        listed.push_back(GroupListing{id, f ? f->protocol_type : std::string(), "Empty"});
      }
    if (!states.empty()) {
      std::erase_if(listed, [&](const GroupListing& g) {
        return std::none_of(states.begin(), states.end(), [&](const std::string& s) {
          return s.size() == g.state.size() && std::equal(s.begin(), s.end(), g.state.begin(), [](char a, char b) { return std::tolower(a) == std::tolower(b); });
        });
      });
    }
    Frame f(header);
    Writer& w = f.w;
    if (v >= 1) w.i32(0);
    w.i16(0);
    w.array(listed.size(), flex);
    for (const GroupListing& g : listed) {
      w.string(g.group_id, flex);
      w.string(g.protocol_type, flex);
      if (v >= 4) w.string(g.state, flex);
      w.tagged_fields(flex);
    }
    w.tagged_fields(flex);
    return f.finish();
  };
  return defer(r, Worker::kOffsets, true, std::move(respond), std::move(read));
}

Outcome Broker::describe_groups(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  struct Described {
    std::string name;
    std::int16_t error = 0;
    GroupDescription group;
    bool look_in_store = false;  // the coordinator does not know it: Empty if it has offsets, else Dead
    Result<std::vector<CommittedOffset>> stored = std::vector<CommittedOffset>{};
  };
  auto described = std::make_shared<std::vector<Described>>();
  const std::int32_t n = in.array(flex, false, 1);
  for (std::int32_t i = 0; i < n && in.ok(); ++i) {
    described->emplace_back();
    described->back().name = std::string(in.string(flex));
  }
  if (v >= 3) (void)in.boolean();
  in.tagged_fields(flex);
  if (!in.ok()) return {};
  bool any = false;
  for (Described& d : *described) {
    d.group.group_id = d.name;
    if (!validate_group_id(d.name).ok()) {
      d.error = error::kInvalidGroupId;
      d.group.state = "Dead";
    } else if (!groups_.coordinates(d.name)) {
      d.error = error::kNotCoordinator;  // Kafka's answer leaves the state empty
    } else {
      d.group = groups_.describe(d.name);
      d.look_in_store = d.group.state == "Dead";
      any = any || d.look_in_store;
    }
  }
  auto read = [this, described] {
    for (Described& d : *described)
      if (d.look_in_store) d.stored = node_.fetch_offsets(d.name, "");
  };
  auto respond = [this, described, header = owned_header(r), v, flex](std::int16_t& first_error) {
    Frame f(header);
    Writer& w = f.w;
    if (v >= 1) w.i32(0);
    w.array(described->size(), flex);
    for (Described& d : *described) {
      if (d.look_in_store) {
        if (!d.stored.ok()) {
          d.error = error::kCoordinatorNotAvailable;
        } else if (!d.stored->empty()) {
          d.group.state = "Empty";
          const std::optional<GroupCoordinator::ForgottenGroup> forgotten = groups_.forgotten(d.name);
          d.group.protocol_type = forgotten ? forgotten->protocol_type : std::string();
        }
      }
      if (d.error != 0 && first_error == 0) first_error = d.error;
      w.i16(d.error);
      w.string(d.name, flex);
      w.string(d.group.state, flex);
      w.string(d.group.protocol_type, flex);
      w.string(d.group.protocol_name, flex);
      w.array(d.group.members.size(), flex);
      for (const GroupMemberDescription& m : d.group.members) {
        w.string(m.member_id, flex);
        if (v >= 4) w.nullable_string(view(m.group_instance_id), flex);
        w.string(m.client_id, flex);
        w.string(m.client_host, flex);
        w.bytes(m.metadata, flex);
        w.bytes(m.assignment, flex);
        w.tagged_fields(flex);
      }
      if (v >= 3) w.i32(kNullAuthorizedOperations);
      w.tagged_fields(flex);
    }
    w.tagged_fields(flex);
    return f.finish();
  };
  return defer(r, Worker::kOffsets, any, std::move(respond), std::move(read));
}

}  // namespace weft::kafka::detail

#include "weft/cluster_node.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "weft/fabric/log.h"
#include "weft/fabric/serial_worker.h"
#include "weft/fabric/thread_name.h"

namespace weft {
Result<TopicConfig> topic_config_from_text(std::string_view text, TopicConfig base) {
  std::size_t at = 0;
  while (at < text.size()) {
    const std::size_t end = std::min(text.find(',', at), text.size());
    const std::string_view pair = text.substr(at, end - at);
    const std::size_t eq = pair.find('=');
    if (eq == std::string_view::npos) return Error{Errc::kInvalidArgument, "topic setting '" + std::string(pair) + "' is not key=value"};
    WEFT_TRY_VOID(set_topic_config(base, pair.substr(0, eq), pair.substr(eq + 1)));
    at = end + 1;
  }
  return base;
}

std::string topic_config_text(const TopicConfig& c) {
  return "ring.capacity.bytes=" + std::to_string(c.ring_capacity_bytes) + ",max.batch.bytes=" + std::to_string(c.max_batch_bytes) +
         ",retention.bytes=" + std::to_string(c.retention_bytes) + ",retention.ms=" + std::to_string(c.retention_ms) +
         ",segment.bytes=" + std::to_string(c.segment_bytes) + ",segment.ms=" + std::to_string(c.segment_ms) + ",fsync=" + fsync_policy_name(c);
}

Result<TopicConfig> topic_config_of(const TopicRecord& record, TopicConfig base) {
  WEFT_TRY(TopicConfig config, topic_config_from_text(record.config, std::move(base)));
  if (record.min_insync_replicas != 1) config.min_insync_replicas = record.min_insync_replicas;  // else the text's, if it names one
  return config;
}

struct ClusterNode::Impl {
  Node& node;
  Transport& transport;
  std::shared_ptr<MetadataStore> store;
  ClusterNodeOptions options;
  std::unique_ptr<Replicator> replicator;
  std::unique_ptr<ClusterMember> member;
  std::atomic<bool> stopping{false};
  std::atomic<bool> drain_requested{false};
  bool drained = false;  // control thread
  std::thread control;
  std::thread replication;
  UniqueFd wake;
  int hw_event = -1;  // under `mutex`, so set_high_watermark_event(-1) means no write follows

  // Between the threads and for readers, under `mutex`.
  mutable std::mutex mutex;
  std::vector<Assignment> roles;  // control -> replication: roles to take
  // An in-sync set change with the topic its leader's role is of (TopicRecord::id).
  struct Proposal {
    IsrProposal isr;
    std::string topic_id;
    bool tried = false;  // a try went unanswered: the next only looks whether it was made
  };
  std::vector<Proposal> proposals;  // replication -> control: in-sync set changes to commit
  // control -> replication: proposals answered, and the revision from which states say so
  struct Settled {
    PartitionId partition;
    std::int32_t epoch = 0;
    std::uint64_t sequence = 0;
    std::int64_t from_revision = 0;
  };
  std::vector<Settled> settled;
  std::vector<Proposal> unanswered;  // control thread: commits whose answer was lost, tried again
  std::map<std::string, TopicRecord> topics;
  std::map<PartitionId, PartitionState> partitions;
  std::map<NodeId, NodeRecord> nodes;
  NodeId controller = -1;
  bool reachable = true;
  std::map<PartitionId, Offset> high_watermarks;
  std::vector<ReplicaStatus> status;
  IsrChanges isr_changes;

  // The replication thread's own.
  struct Role {
    Assignment assignment;
    std::unique_ptr<ReplicaLog> log;
    std::string topic_id;  // TopicConfig::cluster_topic_id of the topic the role was taken for
  };
  std::map<PartitionId, Role> taken;
  // Roles that could not be taken yet (their topic not made here yet), the newest for each
  // partition: a later assignment replaces the one waiting (a replica moved away meanwhile).
  std::map<PartitionId, Assignment> retry;

  // Replicas' local topics are made and deleted on a worker of their own: a topic's rings, files
  // and syncs take ~8 ms (a slow disk, far more), and on the replication thread they held every
  // other partition's replication meanwhile (acks=all producers waited). Names with a job queued
  // or under way take no role until it is done, so none is taken on a copy about to go or not
  // made yet; a creation that failed is queued again a second later, not on every pass, and
  // one that keeps failing (a copy that cannot be removed) twice as late each time, up to a minute.
  std::mutex admin_mutex;
  std::condition_variable admin_done;
  std::map<std::string, int, std::less<>> admin_jobs;  // under admin_mutex: jobs per name
  struct CreateFailures {
    std::chrono::steady_clock::time_point retry_at;
    int in_a_row = 0;
  };
  std::map<std::string, CreateFailures, std::less<>> create_failed;  // under admin_mutex
  std::unique_ptr<SerialWorker> topics_worker;  // after what its jobs use; stopped first by ~ClusterNode

  Impl(Node& n, Transport& t, std::shared_ptr<MetadataStore> s, ClusterNodeOptions o)
      : node(n), transport(t), store(std::move(s)), options(std::move(o)) {}

  void control_loop() {
    while (!stopping.load(std::memory_order_relaxed)) {
      if (drain_requested.load(std::memory_order_relaxed) && !drained) {
        if (member->drain().ok()) drained = true;
      }
      member->run_once(20);
      std::vector<Assignment> fresh = member->take_assignments();
      std::vector<Proposal> wanted;
      {
        std::lock_guard lock(mutex);
        roles.insert(roles.end(), std::make_move_iterator(fresh.begin()), std::make_move_iterator(fresh.end()));
        topics = member->topics();
        partitions = member->partitions();
        nodes = member->nodes();
        controller = member->controller();
        reachable = member->store_reachable();
        wanted.swap(proposals);
      }
      wanted.insert(wanted.begin(), std::make_move_iterator(unanswered.begin()), std::make_move_iterator(unanswered.end()));
      unanswered.clear();
      for (std::size_t i = 0; i < wanted.size(); ++i) {
        const IsrProposal& p = wanted[i].isr;
        std::int64_t settled_from = -1;
        Result<bool> committed =
            member->commit_isr(p.partition, p.leader_epoch, p.isr, p.based_on, wanted[i].topic_id, &settled_from, wanted[i].tried);
        if (!committed.ok()) {
          // The store is away, or its answer was lost after the write: the commit may be made.
          // Until one try answers, the leader keeps counting the members it would add (handing it
          // the metadata's set now could stop them counting while the metadata holds them). The
          // rest wait too: each try would wait out the store's timeout.
          for (std::size_t j = i; j < wanted.size(); ++j) {
            wanted[j].tried = wanted[j].tried || j == i;
            unanswered.push_back(std::move(wanted[j]));
          }
          break;
        }
        {
          std::lock_guard lock(mutex);
          settled.push_back(Settled{p.partition, p.leader_epoch, p.sequence, settled_from});
        }
        if (*committed) {
          {
            std::lock_guard lock(mutex);
            (p.isr.size() < p.based_on.size() ? isr_changes.shrinks : isr_changes.expands) += 1;
          }
          log(LogLevel::kInfo, "cluster: in-sync set changed", {{"partition", to_string(p.partition)}, {"why", p.reason}});
        }
        // Committed or refused (the partition moved on), the state that says so comes back as a
        // role with the next read of the metadata (commit_isr sees to it), and with it the
        // leader's proposal ends; it proposes again if it still wants to.
      }
    }
  }

  // Which topic of its name a record is (TopicConfig::cluster_topic_id of its local copies): ""
  // for a record made before records had ids.
  std::string topic_id_of(const TopicRecord& record) const { return record.id.empty() ? std::string() : options.cluster.cluster + "/" + record.id; }

  // Which topic of its name this node's copy of `name` is (its TopicConfig::cluster_topic_id: ""
  // for a copy made before copies were marked), or nothing when there is no copy.
  std::optional<std::string> local_copy_of(const std::string& name) const {
    Result<TopicInfo> local = node.describe_topic(name);
    if (!local.ok()) return std::nullopt;
    return std::move(local->config.cluster_topic_id);
  }

  // The topic here, for a role of it: true once its copy of `record`'s topic exists; false while
  // its creation (queued here when the role arrives first), its deletion, or its replacement (the
  // copy here being of an earlier topic of the name) is on the topics' worker, the role then
  // retried on the next pass. A copy made before copies were marked ("") is taken as it is.
  bool ensure_local_topic(const PartitionId& id, const TopicRecord& record) {
    {
      std::lock_guard lock(admin_mutex);
      if (admin_jobs.contains(id.topic)) return false;
      if (auto failed = create_failed.find(id.topic); failed != create_failed.end() && std::chrono::steady_clock::now() < failed->second.retry_at)
        return false;
    }
    const std::string wanted = topic_id_of(record);
    const std::optional<std::string> local = local_copy_of(id.topic);
    if (local && (*local == wanted || local->empty())) return true;
    Result<TopicConfig> config = topic_config_of(record, node.options().default_topic);
    if (!config.ok()) {
      log(LogLevel::kError, "cluster: a topic's settings are unreadable; its replicas here wait", {{"topic", id.topic}, {"error", config.error().message}});
      return false;
    }
    config->partitions = record.partitions;
    config->replicated = true;
    config->cluster_topic_id = wanted;
    if (local) {
      // The topic was deleted and made again under its name while this copy stayed (this node
      // was down, or saw both at once): its records and epochs are another log's.
      log(LogLevel::kInfo, "cluster: a local copy of an earlier topic of the name is replaced",
          {{"topic", id.topic}, {"copy_of", *local}, {"now", wanted}});
      drop_roles_of(id.topic);
    }
    queue_topic_job(id.topic, [this, name = id.topic, config = *config] {
      // The copy of an earlier topic goes first; while any of it stays, nothing is made in its
      // place (its log folders would be taken up).
      Result<TopicInfo> created = delete_local_copy(name, config.cluster_topic_id) ? node.create_topic(name, config)
                                                                                   : Result<TopicInfo>(Error{Errc::kIo, "the earlier copy stays"});
      std::lock_guard lock(admin_mutex);
      if (created.ok() || created.error().code == Errc::kAlreadyExists) {
        create_failed.erase(name);
        return;
      }
      CreateFailures& failed = create_failed[name];
      failed.in_a_row = std::min(failed.in_a_row + 1, 7);
      failed.retry_at = std::chrono::steady_clock::now() + std::chrono::seconds(std::min(1 << (failed.in_a_row - 1), 60));
      log(LogLevel::kError, "cluster: a replica's topic could not be created here",
          {{"topic", name}, {"error", created.error().message}, {"failures_in_a_row", std::to_string(failed.in_a_row)}});
    });
    return false;
  }

  // On the topics' worker: deletes the local copy of `name` unless it is the copy of topic
  // `keep` (a cluster_topic_id; nullopt: whatever it is of) or, with `keep`, a copy made before
  // copies were marked (taken as any topic's of the name, as ensure_local_topic does). True
  // when no other copy stays.
  bool delete_local_copy(const std::string& name, const std::optional<std::string>& keep) {
    if (keep) {
      const std::optional<std::string> local = local_copy_of(name);
      if (!local || *local == *keep || local->empty()) return true;
    }
    Result<void> deleted = node.delete_topic(name);
    if (deleted.ok() || deleted.error().code == Errc::kNotFound) return true;
    log(LogLevel::kWarn, "cluster: a deleted topic's local copy stays", {{"topic", name}, {"error", deleted.error().message}});
    return false;
  }

  // The replication thread lets go of the roles on `topic`'s local copy (about to go): every one,
  // or (`keep`) those taken for another topic of the name than `keep` (a cluster_topic_id), so
  // roles already taken for the current topic stay when an earlier one's assignment comes late.
  void drop_roles_of(const std::string& topic, const std::optional<std::string>& keep = std::nullopt) {
    for (auto it = taken.lower_bound(PartitionId{topic, 0}); it != taken.end() && it->first.topic == topic;) {
      if (keep && it->second.topic_id == *keep) {
        ++it;
        continue;
      }
      replicator->forget(it->first);
      it = taken.erase(it);
    }
  }

  // At start, the local copies of this cluster's topics:
  // - those the store does not have are named in the log and kept. The topic may have been
  //   deleted while this node was down (or crashed before it removed its copy); but a store
  //   restored from an old backup, or started empty, lacks topics that were never deleted, and
  //   deleting every copy of them would lose them for good;
  // - those of an earlier topic of a name the store has (deleted and made again while this node
  //   was down) go: no role of that topic will come, and a role of the new one would replace the
  //   copy anyway.
  void sort_out_local_copies(const std::map<std::string, TopicRecord>& records) {
    const std::string ours = options.cluster.cluster + "/";
    for (const std::string& name : node.list_topics()) {
      const std::optional<std::string> local = local_copy_of(name);
      if (!local || !local->starts_with(ours)) continue;
      const auto record = records.find(name);
      if (record == records.end()) {
        log(LogLevel::kWarn, "cluster: a local copy of a topic the cluster does not have is kept; delete its files once the topic is gone for good",
            {{"topic", name}, {"copy_of", *local}});
        continue;
      }
      const std::string current = topic_id_of(record->second);
      if (current.empty() || *local == current) continue;
      log(LogLevel::kInfo, "cluster: a local copy of an earlier topic of the name is deleted", {{"topic", name}, {"copy_of", *local}, {"now", current}});
      queue_topic_job(name, [this, name, current] { delete_local_copy(name, current); });
    }
  }

  // Runs `job` on the topics' worker, the name counted busy until it is done; the worker then
  // wakes the replication thread (its `wake` eventfd) to retry the roles waiting on it.
  void queue_topic_job(const std::string& name, std::function<void()> job) {
    {
      std::lock_guard lock(admin_mutex);
      ++admin_jobs[name];
    }
    topics_worker->add([this, name, job = std::move(job)] {
      job();
      {
        std::lock_guard lock(admin_mutex);
        if (auto it = admin_jobs.find(name); it != admin_jobs.end() && --it->second == 0) admin_jobs.erase(it);
      }
      admin_done.notify_all();
    });
  }

  void apply(const Assignment& a, const std::map<std::string, TopicRecord>& records) {
    retry.erase(a.partition);  // an earlier assignment of the partition waiting to be retried is superseded
    const PartitionId& id = a.partition;
    auto record = records.find(id.topic);
    if (!a.replica) {
      replicator->forget(id);
      taken.erase(id);
      // A deleted topic's local copy goes with its last replica here (as does that of a topic
      // made again under the name that this node does not replicate, whether or not its roles
      // were dropped before), so a topic made again under the name starts empty.
      const bool any_left = std::any_of(taken.begin(), taken.end(), [&](const auto& t) { return t.first.topic == id.topic; });
      if (record == records.end() && !any_left) {
        queue_topic_job(id.topic, [this, name = id.topic] { delete_local_copy(name, std::nullopt); });
      } else if (!any_left && !record->second.id.empty()) {
        // The copy goes if it is of an earlier topic of the name (delete_local_copy looks).
        queue_topic_job(id.topic, [this, name = id.topic, keep = topic_id_of(record->second)] { delete_local_copy(name, keep); });
      }
      return;
    }
    if (record == records.end()) {  // not in this view of the metadata yet
      retry.insert_or_assign(id, a);
      return;
    }
    // A state of a topic deleted and made again under the name, which the controller is
    // removing: the new topic's own assignment follows. Whatever role the old topic has here
    // stops taking writes now (the copy will be replaced).
    const std::string topic_id = topic_id_of(record->second);
    if (!a.state.topic_id.empty() && a.state.topic_id != record->second.id) {
      drop_roles_of(id.topic, topic_id);
      return;
    }
    if (auto held = taken.find(id); held != taken.end() && held->second.topic_id != topic_id) drop_roles_of(id.topic, topic_id);
    if (!ensure_local_topic(id, record->second)) {
      retry.insert_or_assign(id, a);
      return;
    }
    Role& role = taken[id];
    role.topic_id = topic_id;
    if (role.log == nullptr) {
      Result<std::unique_ptr<ReplicaLog>> opened = node.replica_log(id.topic, id.partition);
      if (!opened.ok()) {
        log(LogLevel::kError, "cluster: a replica cannot be served here", {{"partition", to_string(id)}, {"error", opened.error().message}});
        taken.erase(id);
        return;
      }
      role.log = std::move(opened.value());
    }
    const Assignment before = role.assignment;
    const bool same_epoch = before.replica && before.state.leader == a.state.leader && before.state.leader_epoch == a.state.leader_epoch &&
                            before.leader_address == a.leader_address;
    role.assignment = a;
    if (a.leader) {
      if (same_epoch && before.leader) {
        replicator->set_replicas(id, a.state.leader_epoch, a.state.replicas);
        replicator->set_isr(id, a.state.leader_epoch, a.state.isr, a.state.revision);
        return;
      }
      if (Result<void> led = replicator->lead(id, role.log.get(), a.state.leader_epoch, a.state.replicas, a.state.isr, a.state.revision); !led.ok()) {
        log(LogLevel::kError, "cluster: cannot lead a partition", {{"partition", to_string(id)}, {"error", led.error().message}});
      } else {
        log(LogLevel::kInfo, "cluster: leading", {{"partition", to_string(id)}, {"epoch", std::to_string(a.state.leader_epoch)}});
      }
      return;
    }
    if (a.state.leader < 0 || a.leader_address.empty()) {
      replicator->forget(id);  // no leader to follow now
      role.assignment.replica = false;
      return;
    }
    if (same_epoch && !before.leader) return;
    if (Result<void> followed = replicator->follow(id, role.log.get(), a.state.leader_epoch, a.state.leader, a.leader_address); !followed.ok()) {
      log(LogLevel::kError, "cluster: cannot follow a partition", {{"partition", to_string(id)}, {"error", followed.error().message}});
    }
  }

  void replication_loop() {
    auto last_status = std::chrono::steady_clock::now() - std::chrono::seconds(1);
    // Roles not yet taken, oldest first. A burst of them (a topic of many partitions, many topics
    // made at once) is taken ~2 ms at a time with a replication round between: each role opens its
    // log and ring (file system calls that a busy journal holds for milliseconds), and taking forty
    // back to back held every other partition's acks=all writes for the whole burst.
    std::deque<Assignment> waiting;
    constexpr auto kRolesPerRound = std::chrono::milliseconds(2);
    while (!stopping.load(std::memory_order_relaxed)) {
      std::vector<Assignment> next;
      std::map<std::string, TopicRecord> records;
      std::vector<Settled> answered;
      {
        std::lock_guard lock(mutex);
        next.swap(roles);
        answered.swap(settled);
        if (!next.empty() || !retry.empty() || !waiting.empty()) records = topics;
      }
      if (!next.empty() || !retry.empty()) {
        std::map<PartitionId, Assignment> again = std::move(retry);
        retry.clear();
        // A later assignment of a partition supersedes one to retry or still waiting (a retry
        // is of a role taken before any assignment that waits).
        for (const Assignment& a : next) again.erase(a.partition);
        for (const Assignment& w : waiting) again.erase(w.partition);
        std::erase_if(waiting, [&](const Assignment& w) {
          return std::any_of(next.begin(), next.end(), [&](const Assignment& a) { return a.partition == w.partition; });
        });
        for (auto& [id, a] : again) waiting.push_back(std::move(a));
        for (Assignment& a : next) waiting.push_back(std::move(a));
      }
      for (const Settled& s : answered) replicator->proposal_settled(s.partition, s.epoch, s.sequence, s.from_revision);
      const auto round_start = std::chrono::steady_clock::now();
      while (!waiting.empty() && std::chrono::steady_clock::now() - round_start < kRolesPerRound) {
        const Assignment a = std::move(waiting.front());
        waiting.pop_front();
        apply(a, records);
      }
      replicator->run_once(waiting.empty() ? 5 : 0);
      std::vector<Proposal> wanted;
      for (IsrProposal& p : replicator->take_isr_proposals()) {
        auto role = taken.find(p.partition);
        wanted.push_back(Proposal{std::move(p), role == taken.end() ? std::string() : role->second.assignment.state.topic_id});
      }
      const auto now = std::chrono::steady_clock::now();
      std::vector<ReplicaStatus> fresh;
      const bool refresh = now - last_status > std::chrono::milliseconds(100);
      if (refresh) {
        fresh = replicator->status();
        last_status = now;
      }
      bool moved = false;
      {
        std::lock_guard lock(mutex);
        proposals.insert(proposals.end(), wanted.begin(), wanted.end());
        // Updated in place: the map allocates only when a replica comes or goes.
        std::erase_if(high_watermarks, [&](const auto& entry) { return !taken.contains(entry.first); });
        for (const auto& entry : taken) {
          std::optional<Offset> hw = replicator->high_watermark(entry.first);
          if (!hw) continue;
          Offset& known = high_watermarks[entry.first];
          // Only a leader's listener waits on its high watermark (acks=all, fetches); a follower's
          // moves with every record and would wake its listener for nothing.
          moved = moved || (known != *hw && entry.second.assignment.leader);
          known = *hw;
        }
        if (refresh) status = std::move(fresh);
        if (moved && hw_event >= 0) {
          const std::uint64_t one = 1;
          (void)!::write(hw_event, &one, sizeof one);  // a non-blocking eventfd: never waits
        }
      }
    }
  }
};

ClusterNode::ClusterNode(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ClusterNode::~ClusterNode() {
  impl_->node.set_partition_router({});
  impl_->node.set_offset_mirror(nullptr);
  impl_->stopping = true;
  if (impl_->control.joinable()) impl_->control.join();
  if (impl_->replication.joinable()) impl_->replication.join();
  {
    // The jobs queued end first (bounded): a deleted topic's local copy would otherwise stay, as
    // no role of it comes at the next start. A creation dropped is queued again then.
    std::unique_lock lock(impl_->admin_mutex);
    impl_->admin_done.wait_for(lock, std::chrono::seconds(10), [&] { return impl_->admin_jobs.empty(); });
  }
  impl_->topics_worker.reset();
  impl_->node.set_replication_event(-1);
  impl_->taken.clear();  // the replicas' logs, before the node they belong to may go
  impl_->replicator.reset();  // its connects under way write to `wake` when done: before it closes
  // After a drain the registration goes at once; otherwise (a crash, as far as the cluster can
  // tell) the lease runs out.
  if (impl_->drained) impl_->member->leave();
}

Result<std::unique_ptr<ClusterNode>> ClusterNode::start(Node& node, Transport& transport, std::shared_ptr<MetadataStore> store,
                                                        ClusterNodeOptions options) {
  auto impl = std::make_unique<Impl>(node, transport, std::move(store), std::move(options));
  WEFT_TRY(impl->replicator, Replicator::start(transport, impl->options.cluster.self.id, impl->options.replication_listen, impl->options.replication));
  impl->options.cluster.self.replication_address = impl->replicator->address();
  WEFT_TRY(impl->member, ClusterMember::join(impl->store, impl->options.cluster));
  // The node's passes wake the replication thread as records arrive and logs move.
  impl->wake = UniqueFd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!impl->wake.valid()) return os_error(Errc::kIo, "eventfd for the replication thread", errno);
  node.set_replication_event(impl->wake.get());
  impl->replicator->set_wake_fd(impl->wake.get());
  impl->topics_worker = std::make_unique<SerialWorker>("weft-cl-topics", impl->wake.get());
  impl->sort_out_local_copies(impl->member->topics());
  Impl* raw = impl.get();
  // Local producers ask where a partition takes records: here when this node leads it, else at
  // the leader's Kafka listener (the client library re-routes there).
  node.set_partition_router([raw](std::string_view topic, std::uint32_t partition) -> Result<PartitionRoute> {
    std::lock_guard lock(raw->mutex);
    auto s = raw->partitions.find(PartitionId{std::string(topic), partition});
    if (s == raw->partitions.end()) return PartitionRoute{};  // a topic of this node alone
    if (auto t = raw->topics.find(std::string(topic)); !s->second.topic_id.empty() && (t == raw->topics.end() || t->second.id != s->second.topic_id))
      return Error{Errc::kUnavailable, "topic '" + std::string(topic) + "' was deleted (and maybe made again): its partitions are being assigned"};
    PartitionRoute route;
    route.leader = s->second.leader;
    route.leader_epoch = s->second.leader_epoch;
    route.here = route.leader == raw->options.cluster.self.id;
    if (route.leader < 0)
      return Error{Errc::kUnavailable, "topic '" + std::string(topic) + "' partition " + std::to_string(partition) +
                                           " has no leader now (an election is under way)"};
    if (auto n = raw->nodes.find(route.leader); n != raw->nodes.end()) route.kafka_address = n->second.kafka_address;
    return route;
  });
  // Committed offsets live in the store, so a group's next coordinator has them.
  node.set_offset_mirror(make_store_offset_mirror(raw->store, raw->options.cluster.cluster));
  raw->control = std::thread([raw] {
    name_this_thread("weft-control");
    raw->control_loop();
  });
  raw->replication = std::thread([raw] {
    name_this_thread("weft-replica");
    raw->replication_loop();
  });
  log(LogLevel::kInfo, "cluster: joined",
      {{"node", std::to_string(raw->options.cluster.self.id)}, {"cluster", raw->options.cluster.cluster}, {"replication", raw->replicator->address()}});
  return std::unique_ptr<ClusterNode>(new ClusterNode(std::move(impl)));
}

void ClusterNode::records_committed() {
  const std::uint64_t one = 1;
  (void)!::write(impl_->wake.get(), &one, sizeof one);  // non-blocking eventfd, open for the node's life
}

void ClusterNode::set_high_watermark_event(int fd) {
  std::lock_guard lock(impl_->mutex);
  impl_->hw_event = fd;
}

NodeId ClusterNode::id() const noexcept { return impl_->options.cluster.self.id; }
const std::string& ClusterNode::replication_address() const noexcept { return impl_->options.cluster.self.replication_address; }

Result<void> ClusterNode::create_topic(std::string_view name, std::uint32_t partitions, std::uint32_t replication_factor, const TopicConfig& config) {
  TopicConfig checked = config;
  checked.partitions = partitions;
  WEFT_TRY_VOID(validate_topic_config(checked));
  // A leader pushes whole batches, one write at most max_write_bytes long: a larger batch would
  // stop every follower's stream for good, and the partition would go on with its leader alone.
  if (const std::size_t write = impl_->options.replication.max_write_bytes; checked.max_batch_bytes > write)
    return Error{Errc::kInvalidArgument, "max.batch.bytes " + std::to_string(checked.max_batch_bytes) + " is larger than one replication write (" +
                                             std::to_string(write) + " bytes): a replicated topic's batches must fit one"};
  // The store's own list, not this node's view of it (which trails a node that just joined).
  WEFT_TRY(const ClusterSnapshot now, read_cluster(*impl_->store, impl_->options.cluster.cluster));
  const std::size_t live = now.nodes.size();
  if (replication_factor < 1 || replication_factor > live)
    return Error{Errc::kFailedPrecondition, "replication factor " + std::to_string(replication_factor) + " needs that many live nodes; the cluster has " +
                                             std::to_string(live)};
  return create_cluster_topic(*impl_->store, impl_->options.cluster.cluster,
                              TopicRecord{std::string(name), partitions, replication_factor, topic_config_text(config), {}, config.min_insync_replicas});
}

Result<void> ClusterNode::delete_topic(std::string_view name) {
  WEFT_TRY_VOID(delete_cluster_topic(*impl_->store, impl_->options.cluster.cluster, name));
  // Groups' committed offsets of the topic go too (a topic made again starts with none), as Kafka's do.
  return forget_topic_offsets(*impl_->store, impl_->options.cluster.cluster, name);
}

std::optional<PartitionView> ClusterNode::partition(std::string_view topic, std::uint32_t partition) const {
  return view_of(topic, partition, true);
}

std::optional<PartitionView> ClusterNode::leadership(std::string_view topic, std::uint32_t partition) const {
  return view_of(topic, partition, false);
}

std::optional<PartitionView> ClusterNode::view_of(std::string_view topic, std::uint32_t partition, bool with_sets) const {
  std::lock_guard lock(impl_->mutex);
  const PartitionId id{std::string(topic), partition};
  auto s = impl_->partitions.find(id);
  if (s == impl_->partitions.end()) return std::nullopt;
  PartitionView view;
  view.leader = s->second.leader;
  view.leader_epoch = s->second.leader_epoch;
  view.isr_size = static_cast<std::uint32_t>(s->second.isr.size());
  if (with_sets) {
    view.replicas = s->second.replicas;
    view.isr = s->second.isr;
  }
  if (auto hw = impl_->high_watermarks.find(id); hw != impl_->high_watermarks.end()) {
    view.high_watermark = hw->second;
    view.replica_here = true;
  }
  return view;
}

std::vector<NodeRecord> ClusterNode::nodes() const {
  std::lock_guard lock(impl_->mutex);
  std::vector<NodeRecord> out;
  for (const auto& [id, n] : impl_->nodes) out.push_back(n);
  return out;
}

ClusterNode::IsrChanges ClusterNode::isr_changes() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->isr_changes;
}

std::vector<TopicRecord> ClusterNode::topics() const {
  std::lock_guard lock(impl_->mutex);
  std::vector<TopicRecord> out;
  for (const auto& [name, t] : impl_->topics) out.push_back(t);
  return out;
}

std::optional<TopicRecord> ClusterNode::topic(std::string_view name) const {
  std::lock_guard lock(impl_->mutex);
  auto t = impl_->topics.find(std::string(name));
  if (t == impl_->topics.end()) return std::nullopt;
  return t->second;
}

NodeId ClusterNode::group_coordinator(std::string_view group) const {
  // FNV-1a: stable across processes and builds, unlike std::hash.
  std::uint64_t hash = 14695981039346656037ull;
  for (const char c : group) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  std::lock_guard lock(impl_->mutex);
  std::vector<NodeId> candidates;
  for (const auto& [id, n] : impl_->nodes)
    if (!n.kafka_address.empty() && !n.draining) candidates.push_back(id);  // the map keeps them sorted
  if (candidates.empty()) return -1;
  return candidates[hash % candidates.size()];
}

NodeId ClusterNode::controller() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->controller;
}

bool ClusterNode::store_reachable() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->reachable;
}

std::vector<ReplicaStatus> ClusterNode::replicas() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->status;
}

Result<void> ClusterNode::drain(int timeout_ms) {
  impl_->drain_requested = true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    std::size_t led = 0;
    {
      // Only what can move: a partition with no other in-sync replica has nowhere to go (it goes
      // offline when this node leaves, as in Kafka), so waiting for it would only delay the exit.
      std::lock_guard lock(impl_->mutex);
      const NodeId self = impl_->options.cluster.self.id;
      for (const auto& [id, s] : impl_->partitions)
        led += s.leader == self && std::any_of(s.isr.begin(), s.isr.end(), [&](NodeId r) { return r != self && impl_->nodes.contains(r); }) ? 1u : 0u;
    }
    if (led == 0) return ok();
    if (std::chrono::steady_clock::now() > deadline) {
      return Error{Errc::kUnavailable, "node " + std::to_string(id()) + " still leads " + std::to_string(led) +
                                           " partitions that other in-sync replicas could take"};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace weft

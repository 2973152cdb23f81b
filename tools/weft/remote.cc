// `weft produce|consume|perf --bootstrap HOST:PORT`: the same commands against a node reached
// over the Kafka protocol (weftd's Kafka listener, or any Kafka broker), through librdkafka.
//
// perf over the network runs, after a same-run baseline of one TCP stream over loopback: a paced
// end-to-end latency run (each value carries its send time; producer and consumer are threads of
// this process), then on a fresh topic produce flat out (records/s and record bytes/s against
// the baseline) and a fetch of the whole backlog from the beginning, then the same two with a
// bare client.
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "baselines.h"
#include "commands.h"
#include "format.h"
#include "weft/fabric/histogram.h"
#include "weft/fabric/record_batch.h"
#include "weft/fabric/ring.h"
#include "weft/kafka/remote_producer.h"
#include "weft/kafka/wire.h"

namespace weft::cli {
namespace {

std::atomic<int> g_stop{0};  // the signal that asked to stop (0: none)

struct KafkaDeleter {
  void operator()(rd_kafka_t* rk) const noexcept { rd_kafka_destroy(rk); }
};
using KafkaHandle = std::unique_ptr<rd_kafka_t, KafkaDeleter>;

int fail(const std::string& what) {
  std::fprintf(stderr, "weft: %s\n", what.c_str());
  return 1;
}

// A client with the given settings, then the user's (-X, which override ours); the error names the
// setting librdkafka refused.
KafkaHandle make_client(const RemoteOptions& o, rd_kafka_type_t type, std::vector<std::pair<std::string, std::string>> settings, std::string& error,
                        void (*delivered)(rd_kafka_t*, const rd_kafka_message_t*, void*) = nullptr, void* opaque = nullptr) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char text[512];
  // Nagle off, as the Java client has it: a small request must not wait for the last one's ACK.
  (void)rd_kafka_conf_set(conf, "socket.nagle.disable", "true", text, sizeof text);
  settings.insert(settings.end(), o.client_settings.begin(), o.client_settings.end());
  for (const auto& [key, value] : settings) {
    if (rd_kafka_conf_set(conf, key.c_str(), value.c_str(), text, sizeof text) != RD_KAFKA_CONF_OK) {
      error = key + "=" + value + ": " + text;
      rd_kafka_conf_destroy(conf);
      return nullptr;
    }
  }
  if (delivered != nullptr) rd_kafka_conf_set_dr_msg_cb(conf, delivered);
  if (opaque != nullptr) rd_kafka_conf_set_opaque(conf, opaque);
  rd_kafka_t* rk = rd_kafka_new(type, conf, text, sizeof text);
  if (rk == nullptr) {
    error = text;
    rd_kafka_conf_destroy(conf);
    return nullptr;
  }
  return KafkaHandle(rk);
}

// Partition count of `topic` (-1 with `error` set when the broker does not know it).
int partition_count(rd_kafka_t* rk, const std::string& topic, std::string& error) {
  rd_kafka_topic_t* handle = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
  const rd_kafka_metadata_t* metadata = nullptr;
  const rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, handle, &metadata, 10'000);
  rd_kafka_topic_destroy(handle);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    error = std::string("metadata: ") + rd_kafka_err2str(err);
    return -1;
  }
  int count = -1;
  if (metadata->topic_cnt == 1) {
    if (metadata->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR) error = rd_kafka_err2str(metadata->topics[0].err);
    else count = metadata->topics[0].partition_cnt;
  }
  rd_kafka_metadata_destroy(metadata);
  return count;
}

// HOST:PORT of the broker leading each partition of `topic`, once every one has a leader (a
// cluster elects them a moment after creating the topic); empty with `error` set when they do not
// within 20 s. A timed run waits for this first: librdkafka would otherwise spend its first
// second on metadata retries and count it as the run's.
std::vector<std::string> partition_leaders(rd_kafka_t* rk, const std::string& topic, std::string& error) {
  const std::int64_t deadline = monotonic_ns() + 20'000'000'000;
  while (monotonic_ns() < deadline) {
    rd_kafka_topic_t* handle = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
    const rd_kafka_metadata_t* metadata = nullptr;
    const rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, handle, &metadata, 5'000);
    rd_kafka_topic_destroy(handle);
    std::vector<std::string> leaders;
    const bool listed = err == RD_KAFKA_RESP_ERR_NO_ERROR && metadata->topic_cnt == 1 &&
                        metadata->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR && metadata->topics[0].partition_cnt > 0;
    for (int i = 0; listed && i < metadata->topics[0].partition_cnt; ++i) {
      const std::int32_t leader = metadata->topics[0].partitions[i].leader;
      for (int b = 0; b < metadata->broker_cnt; ++b)
        if (metadata->brokers[b].id == leader) leaders.push_back(std::string(metadata->brokers[b].host) + ":" + std::to_string(metadata->brokers[b].port));
      if (leaders.size() != static_cast<std::size_t>(i) + 1) break;  // no leader yet
    }
    const bool ready = listed && leaders.size() == static_cast<std::size_t>(metadata->topics[0].partition_cnt);
    if (metadata != nullptr) rd_kafka_metadata_destroy(metadata);
    if (ready) return leaders;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  error = "no leader for every partition within 20 s";
  return {};
}

// The one broker leading every partition of `topic` (the bare client speaks to one broker); ""
// with `error` set when there is none.
std::string sole_leader(rd_kafka_t* rk, const std::string& topic, std::string& error) {
  const std::vector<std::string> leaders = partition_leaders(rk, topic, error);
  if (leaders.empty()) return {};
  if (std::any_of(leaders.begin(), leaders.end(), [&](const std::string& l) { return l != leaders.front(); })) {
    error = "its partitions have different leaders";
    return {};
  }
  return leaders.front();
}

// Creates `topic` with `partitions` (and `configs`), or deletes it when `partitions` is 0, with
// the admin API, and waits for the answer.
bool admin_topic(rd_kafka_t* rk, const std::string& topic, int partitions, std::string& error,
                 const std::vector<std::pair<std::string, std::string>>& configs = {}) {
  char text[512];
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk);
  if (partitions > 0) {
    rd_kafka_NewTopic_t* create = rd_kafka_NewTopic_new(topic.c_str(), partitions, -1, text, sizeof text);
    if (create == nullptr) {
      error = text;
      rd_kafka_queue_destroy(queue);
      return false;
    }
    for (const auto& [name, value] : configs) {
      if (rd_kafka_resp_err_t err = rd_kafka_NewTopic_set_config(create, name.c_str(), value.c_str()); err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        error = name + ": " + rd_kafka_err2str(err);
        rd_kafka_NewTopic_destroy(create);
        rd_kafka_queue_destroy(queue);
        return false;
      }
    }
    rd_kafka_CreateTopics(rk, &create, 1, nullptr, queue);
    rd_kafka_NewTopic_destroy(create);
  } else {
    rd_kafka_DeleteTopic_t* remove = rd_kafka_DeleteTopic_new(topic.c_str());
    rd_kafka_DeleteTopics(rk, &remove, 1, nullptr, queue);
    rd_kafka_DeleteTopic_destroy(remove);
  }
  rd_kafka_event_t* event = rd_kafka_queue_poll(queue, 30'000);
  bool ok = event != nullptr && rd_kafka_event_error(event) == RD_KAFKA_RESP_ERR_NO_ERROR;
  if (event == nullptr) error = "no answer from the broker within 30 s";
  else if (!ok) error = rd_kafka_event_error_string(event);
  if (ok) {
    size_t n = 0;
    const rd_kafka_topic_result_t** results = partitions > 0 ? rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(event), &n)
                                                             : rd_kafka_DeleteTopics_result_topics(rd_kafka_event_DeleteTopics_result(event), &n);
    for (size_t i = 0; i < n; ++i) {
      if (rd_kafka_topic_result_error(results[i]) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ok = false;
        const char* message = rd_kafka_topic_result_error_string(results[i]);
        error = message != nullptr ? message : rd_kafka_err2str(rd_kafka_topic_result_error(results[i]));
      }
    }
  }
  if (event != nullptr) rd_kafka_event_destroy(event);
  rd_kafka_queue_destroy(queue);
  return ok;
}

// A topic config as the node reports it (DescribeConfigs); empty when it does not answer.
std::string topic_config(rd_kafka_t* rk, const std::string& topic, std::string_view name) {
  std::string found;
  rd_kafka_ConfigResource_t* resource = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic.c_str());
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk);
  rd_kafka_DescribeConfigs(rk, &resource, 1, nullptr, queue);
  if (rd_kafka_event_t* event = rd_kafka_queue_poll(queue, 10'000); event != nullptr) {
    if (const rd_kafka_DescribeConfigs_result_t* result = rd_kafka_event_DescribeConfigs_result(event); result != nullptr) {
      std::size_t resources = 0;
      const rd_kafka_ConfigResource_t** described = rd_kafka_DescribeConfigs_result_resources(result, &resources);
      for (std::size_t r = 0; r < resources; ++r) {
        std::size_t entries = 0;
        const rd_kafka_ConfigEntry_t** configs = rd_kafka_ConfigResource_configs(described[r], &entries);
        for (std::size_t e = 0; e < entries; ++e) {
          const char* value = rd_kafka_ConfigEntry_value(configs[e]);
          if (name == rd_kafka_ConfigEntry_name(configs[e]) && value != nullptr) found = value;
        }
      }
    }
    rd_kafka_event_destroy(event);
  }
  rd_kafka_queue_destroy(queue);
  rd_kafka_ConfigResource_destroy(resource);
  return found;
}

std::string acks_setting(const std::string& acks) { return acks == "all" ? "-1" : acks; }

struct DeliveryCounts {
  std::atomic<std::uint64_t> delivered{0};
  std::atomic<std::uint64_t> failed{0};
  std::string first_error;
  // The paced run: each record's time from its send to its acknowledgement (the value starts
  // with the send time). Delivery reports run in the producing thread, in rd_kafka_poll.
  LatencyHistogram* acked = nullptr;
};

void count_delivery(rd_kafka_t*, const rd_kafka_message_t* message, void* opaque) {
  auto* counts = static_cast<DeliveryCounts*>(opaque);
  if (message->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    counts->delivered.fetch_add(1, std::memory_order_relaxed);
    if (counts->acked != nullptr && message->len >= sizeof(std::int64_t)) {
      std::int64_t sent = 0;
      std::memcpy(&sent, message->payload, sizeof sent);
      counts->acked->record(static_cast<std::uint64_t>(std::max<std::int64_t>(monotonic_ns() - sent, 0)));
    }
  } else {
    if (counts->failed.fetch_add(1, std::memory_order_relaxed) == 0) counts->first_error = rd_kafka_err2str(message->err);
  }
}

// Sends one record, serving delivery reports while librdkafka's queue is full. With `copy`
// false, librdkafka keeps pointers to key and value: they must stay unchanged until delivered.
bool send(rd_kafka_t* rk, const std::string& topic, std::int32_t partition, const void* key, std::size_t key_bytes, const void* value,
          std::size_t value_bytes, std::int64_t timestamp_ms, std::string& error, bool copy = true) {
  for (int attempt = 0; attempt < 60'000; ++attempt) {
    // librdkafka's RD_KAFKA_V_* macros cast in C style.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wold-style-cast"
    const rd_kafka_resp_err_t err =
        rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_MSGFLAGS(copy ? RD_KAFKA_MSG_F_COPY : 0),
                          RD_KAFKA_V_KEY(const_cast<void*>(key), key_bytes), RD_KAFKA_V_VALUE(const_cast<void*>(value), value_bytes),
                          RD_KAFKA_V_TIMESTAMP(timestamp_ms), RD_KAFKA_V_END);
#pragma GCC diagnostic pop
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return true;
    if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      error = rd_kafka_err2str(err);
      return false;
    }
    rd_kafka_poll(rk, 1);
  }
  error = "librdkafka's queue stayed full for a minute";
  return false;
}

}  // namespace

int run_remote_produce(const RemoteOptions& o, const std::string& topic, const std::string& key_sep, const std::string& acks,
                       const std::string& file, std::int64_t partition) {
  DeliveryCounts counts;
  std::string error;
  KafkaHandle rk = make_client(o, RD_KAFKA_PRODUCER,
                               {{"bootstrap.servers", o.bootstrap}, {"acks", acks_setting(acks)}, {"partitioner", "murmur2_random"},
                                {"linger.ms", "5"}, {"client.id", "weft-cli"}},
                               error, count_delivery, &counts);
  if (!rk) return fail("connecting to " + o.bootstrap + ": " + error);
  rd_kafka_set_log_level(rk.get(), 3);
  std::ifstream in_file;
  if (!file.empty()) in_file.open(file);
  std::istream& in = file.empty() ? std::cin : in_file;
  std::string line;
  std::uint64_t sent = 0;
  const std::int32_t target = partition >= 0 ? static_cast<std::int32_t>(partition) : RD_KAFKA_PARTITION_UA;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string_view value = line;
    std::string_view key;
    bool has_key = false;
    if (!key_sep.empty()) {
      if (const std::size_t at = line.find(key_sep); at != std::string::npos) {
        key = std::string_view(line).substr(0, at);
        value = std::string_view(line).substr(at + key_sep.size());
        has_key = true;
      }
    }
    if (!send(rk.get(), topic, target, has_key ? key.data() : nullptr, has_key ? key.size() : 0, value.data(), value.size(), 0, error))
      return fail("sending to " + topic + ": " + error);
    ++sent;
    rd_kafka_poll(rk.get(), 0);
  }
  const rd_kafka_resp_err_t flushed = rd_kafka_flush(rk.get(), 60'000);
  if (flushed != RD_KAFKA_RESP_ERR_NO_ERROR) return fail(std::string("flushing: ") + rd_kafka_err2str(flushed));
  if (counts.failed.load() > 0)
    return fail(std::to_string(counts.failed.load()) + " of " + std::to_string(sent) + " records were not delivered: " + counts.first_error);
  std::fprintf(stderr, "weft: sent %llu records to %s at %s\n", static_cast<unsigned long long>(sent), topic.c_str(), o.bootstrap.c_str());
  return 0;
}

int run_remote_consume(const RemoteOptions& o, const RemoteConsume& c) {
  std::vector<std::pair<std::string, std::string>> settings{{"bootstrap.servers", o.bootstrap},
                                                            {"client.id", "weft-cli"},
                                                            {"enable.auto.commit", "false"},
                                                            {"enable.partition.eof", "false"}};
  const bool subscribe = !c.group.empty() && c.partition < 0 && (c.from == "earliest" || c.from == "latest");
  settings.emplace_back("group.id", c.group.empty() ? "weft-cli" : c.group);
  if (subscribe) settings.emplace_back("auto.offset.reset", c.from == "earliest" ? "earliest" : "latest");
  std::string error;
  KafkaHandle rk = make_client(o, RD_KAFKA_CONSUMER, settings, error);
  if (!rk) return fail("connecting to " + o.bootstrap + ": " + error);
  rd_kafka_set_log_level(rk.get(), 3);
  rd_kafka_poll_set_consumer(rk.get());

  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(8);
  if (subscribe) {
    // A group member: the group's committed offsets, else --from (auto.offset.reset).
    rd_kafka_topic_partition_list_add(list, c.topic.c_str(), RD_KAFKA_PARTITION_UA);
    const rd_kafka_resp_err_t err = rd_kafka_subscribe(rk.get(), list);
    rd_kafka_topic_partition_list_destroy(list);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) return fail(std::string("subscribing: ") + rd_kafka_err2str(err));
  } else {
    const int partitions = partition_count(rk.get(), c.topic, error);
    if (partitions < 0) {
      rd_kafka_topic_partition_list_destroy(list);
      return fail("topic '" + c.topic + "' at " + o.bootstrap + ": " + error);
    }
    if (c.partition >= partitions) {
      rd_kafka_topic_partition_list_destroy(list);
      return fail("topic '" + c.topic + "' has " + std::to_string(partitions) + " partitions");
    }
    std::int64_t start = RD_KAFKA_OFFSET_END;
    bool by_time = false;
    if (c.from == "earliest") {
      start = RD_KAFKA_OFFSET_BEGINNING;
    } else if (c.from != "latest") {
      by_time = c.from[0] == '@';
      start = std::stoll(by_time ? c.from.substr(1) : c.from);
    }
    for (int p = 0; p < partitions; ++p)
      if (c.partition < 0 || c.partition == p) rd_kafka_topic_partition_list_add(list, c.topic.c_str(), p)->offset = start;
    if (by_time) {
      const rd_kafka_resp_err_t err = rd_kafka_offsets_for_times(rk.get(), list, 10'000);
      if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_topic_partition_list_destroy(list);
        return fail(std::string("looking up offsets by time: ") + rd_kafka_err2str(err));
      }
      for (int i = 0; i < list->cnt; ++i)
        if (list->elems[i].offset < 0) list->elems[i].offset = RD_KAFKA_OFFSET_END;  // nothing that late yet
    }
    const rd_kafka_resp_err_t err = rd_kafka_assign(rk.get(), list);
    rd_kafka_topic_partition_list_destroy(list);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) return fail(std::string("assigning: ") + rd_kafka_err2str(err));
  }

  struct sigaction sa{};
  sa.sa_handler = [](int signal) { g_stop.store(signal, std::memory_order_relaxed); };
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  std::int64_t printed = 0;
  std::int64_t idle_since = monotonic_ns();
  std::string line;
  int status = 0;
  // With a group, what was printed and flushed is committed (each partition's next offset), every
  // second and at the end; records written but not flushed are not.
  std::map<std::int32_t, std::int64_t> next_offsets;  // printed since the last flush
  std::map<std::int32_t, std::int64_t> flushed;       // flushed, not yet committed
  std::int64_t last_commit = monotonic_ns();
  int write_error = 0;
  auto flush = [&] {
    if (!flush_records(write_error)) return false;
    for (const auto& [p, next] : next_offsets) flushed[p] = next;
    next_offsets.clear();
    return true;
  };
  // True when nothing is left to commit. A failure keeps the offsets for the next try; a partition
  // a rebalance took away is dropped (its new owner commits it).
  auto commit = [&] {
    if (c.group.empty() || flushed.empty()) return true;
    rd_kafka_topic_partition_list_t* owned = nullptr;
    if (rd_kafka_assignment(rk.get(), &owned) == RD_KAFKA_RESP_ERR_NO_ERROR && owned != nullptr) {
      std::erase_if(flushed, [&](const auto& entry) { return rd_kafka_topic_partition_list_find(owned, c.topic.c_str(), entry.first) == nullptr; });
      rd_kafka_topic_partition_list_destroy(owned);
    }
    if (flushed.empty()) return true;
    rd_kafka_topic_partition_list_t* offsets = rd_kafka_topic_partition_list_new(static_cast<int>(flushed.size()));
    for (const auto& [p, next] : flushed) rd_kafka_topic_partition_list_add(offsets, c.topic.c_str(), p)->offset = next;
    const rd_kafka_resp_err_t err = rd_kafka_commit(rk.get(), offsets, 0);
    rd_kafka_topic_partition_list_destroy(offsets);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::fprintf(stderr, "weft: committing group '%s': %s\n", c.group.c_str(), rd_kafka_err2str(err));
      return false;
    }
    flushed.clear();
    return true;
  };
  while (!g_stop.load(std::memory_order_relaxed) && (c.count < 0 || printed < c.count)) {
    if (!c.group.empty() && monotonic_ns() - last_commit > 1'000'000'000) {
      if (!flush()) break;
      commit();
      last_commit = monotonic_ns();
    }
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk.get(), 100);
    if (m == nullptr) {
      if (!flush()) break;
      if (c.timeout_ms >= 0 && monotonic_ns() - idle_since >= std::min<std::int64_t>(c.timeout_ms, std::int64_t{1} << 40) * 1'000'000) break;
      continue;
    }
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::fprintf(stderr, "weft: %s\n", rd_kafka_message_errstr(m));
      const bool fatal = m->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC || m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
      rd_kafka_message_destroy(m);
      if (fatal) {
        status = 3;
        break;
      }
      continue;
    }
    PrintedRecord r;
    r.topic = c.topic;
    r.partition = static_cast<std::uint32_t>(m->partition);
    r.offset = m->offset;
    rd_kafka_timestamp_type_t type;
    r.timestamp_ms = rd_kafka_message_timestamp(m, &type);
    if (m->key != nullptr) r.key = std::string_view(static_cast<const char*>(m->key), m->key_len);
    if (m->payload != nullptr) r.value = std::string_view(static_cast<const char*>(m->payload), m->len);
    line.clear();
    format_record(line, c.format, r);
    const bool taken = write_record(line, write_error);
    if (taken) {
      ++printed;
      idle_since = monotonic_ns();
      if (!c.group.empty()) next_offsets[m->partition] = m->offset + 1;
    }
    rd_kafka_message_destroy(m);
    if (!taken) break;
  }
  const bool written = write_error == 0 && flush();
  const bool committed = commit();
  rd_kafka_consumer_close(rk.get());
  if (!written) return records_not_written(write_error, printed);
  if (!committed && status == 0) status = 4;  // said above; the next run reads those records again
  if (status == 0 && c.count >= 0 && printed < c.count)
    return g_stop.load(std::memory_order_relaxed) != 0 ? interrupted_with_too_few(printed, c.count, g_stop.load())
                                                       : consumed_too_few(printed, c.count, c.timeout_ms);
  return status;
}

// ---- perf -----------------------------------------------------------------------------------

namespace {

struct PhaseResult {
  std::uint64_t records = 0;
  double seconds = 0;
  std::uint64_t failed = 0;
};

// Text that compresses about as log lines do (words from a small vocabulary, numbers,
// separators), not a run of one byte that any codec shrinks to nothing. The same every run.
std::vector<char> log_like_text(std::size_t bytes) {
  static constexpr std::string_view kWords[] = {"GET",  "POST", "/api/v1/orders", "/static/app.js", "status=", "200",     "404",
                                                "user", "id=",  "session",        "latency_ms=",    "region=", "eu-west", "us-east",
                                                "ok",   "true", "false",          "referer=",       "agent=",  "Mozilla/5.0"};
  std::vector<char> text;
  text.reserve(bytes);
  std::uint64_t state = 0x9E3779B97F4A7C15ull;
  while (text.size() < bytes) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;  // a fixed LCG: the same text every run
    const std::uint64_t pick = state >> 33;
    if (pick % 4 == 0) {
      const std::string number = std::to_string(pick % 100'000);
      text.insert(text.end(), number.begin(), number.end());
    } else {
      const std::string_view word = kWords[pick % std::size(kWords)];
      text.insert(text.end(), word.begin(), word.end());
    }
    text.push_back(pick % 7 == 0 ? '\n' : ' ');
  }
  text.resize(bytes);
  return text;
}

// Record values cut from one long stretch of that text, each starting elsewhere, so that a batch
// of them compresses as a batch of different log lines would, not as one value repeated.
class RecordValues {
 public:
  // Consecutive values do not overlap (the step is at least a value, and odd, so the starts cycle
  // through the stretch rather than repeat after a few values).
  explicit RecordValues(std::size_t record_bytes)
      : bytes_(record_bytes),
        step_((record_bytes + 64) | 1),
        stretch_(std::max<std::size_t>(std::size_t{4} << 20, 16 * step_)),
        text_(log_like_text(stretch_ + record_bytes)) {}
  const char* at(std::uint64_t i) const { return text_.data() + (i * step_) % stretch_; }
  std::size_t size() const { return bytes_; }

 private:
  std::size_t bytes_;
  std::size_t step_;
  std::size_t stretch_;
  std::vector<char> text_;
};

PhaseResult produce_phase(const RemoteOptions& o, const PerfOptions& p, const std::string& topic, std::uint64_t records, std::uint64_t rate,
                          bool low_latency, std::string& error, LatencyHistogram* acked = nullptr) {
  DeliveryCounts counts;
  counts.acked = acked;
  // Before the client: librdkafka points into these values until they are delivered, and a flush
  // that times out leaves some queued, so they must outlive the client's destruction.
  const RecordValues values(p.record_size);
  KafkaHandle rk = make_client(o, RD_KAFKA_PRODUCER,
                               {{"bootstrap.servers", o.bootstrap},
                                {"acks", acks_setting(p.acks)},
                                {"linger.ms", low_latency ? "0" : "5"},
                                {"batch.size", "1000000"},
                                {"queue.buffering.max.kbytes", "1048576"},
                                {"compression.type", p.compression},
                                {"client.id", "weft-perf"}},
                               error, count_delivery, &counts);
  PhaseResult result;
  if (!rk) return result;
  std::vector<char> value(p.record_size);
  // Untimed: this producer learns the topic's leaders before the clock starts. Once its first
  // metadata is in, librdkafka asks about a topic it has not seen only on its next 1 s scan, and
  // the timed run counted that second (10 records "took" 1 s).
  if (rd_kafka_topic_t* handle = rd_kafka_topic_new(rk.get(), topic.c_str(), nullptr); handle != nullptr) {
    const rd_kafka_metadata_t* metadata = nullptr;
    if (rd_kafka_metadata(rk.get(), 0, handle, &metadata, 5'000) == RD_KAFKA_RESP_ERR_NO_ERROR) rd_kafka_metadata_destroy(metadata);
    rd_kafka_topic_destroy(handle);
  }
  // Only the latency runs read the send time back (from a copy of the value, stamped). The
  // throughput run hands librdkafka values that stay unchanged until delivered, without its copy
  // of them (RD_KAFKA_MSG_F_COPY: a malloc and a memcpy per record), as a throughput-minded
  // application would.
  const bool stamped = low_latency || acked != nullptr;
  const std::int64_t start = monotonic_ns();
  for (std::uint64_t i = 0; i < records && !g_stop.load(std::memory_order_relaxed); ++i) {
    if (rate > 0) {
      const std::int64_t due = start + static_cast<std::int64_t>(static_cast<double>(i) * 1e9 / static_cast<double>(rate));
      // Sleep, not spin, until the send is due: on a small machine a spinning pacer takes the
      // core the node and the consumer need, and the latency measured would be the scheduler's.
      for (std::int64_t now = monotonic_ns(); now < due; now = monotonic_ns()) {
        rd_kafka_poll(rk.get(), 0);
        const std::int64_t wait = due - now;
        if (wait > 20'000) std::this_thread::sleep_for(std::chrono::nanoseconds(wait - 10'000));
      }
    }
    const char* bytes = values.at(i);
    if (stamped) {
      std::memcpy(value.data(), bytes, value.size());
      const std::int64_t now = monotonic_ns();
      std::memcpy(value.data(), &now, sizeof now);  // the send time, read back by the latency consumer
      bytes = value.data();
    }
    if (!send(rk.get(), topic, static_cast<std::int32_t>(i % p.partitions), nullptr, 0, bytes, values.size(), 0, error, stamped)) break;
    if ((i & 1023) == 0) rd_kafka_poll(rk.get(), 0);
  }
  rd_kafka_flush(rk.get(), 120'000);
  result.seconds = static_cast<double>(monotonic_ns() - start) / 1e9;
  result.records = counts.delivered.load();
  result.failed = counts.failed.load();
  if (result.failed > 0 && error.empty()) error = counts.first_error;
  return result;
}

// Reads `records` from the beginning of every partition; with `latency`, records each value's
// age. Stops after 30 s without a record.
PhaseResult fetch_phase(const RemoteOptions& o, const PerfOptions& p, const std::string& topic, std::uint64_t records, bool from_end,
                        LatencyHistogram* latency, std::atomic<bool>* ready, std::string& error) {
  KafkaHandle rk = make_client(o, RD_KAFKA_CONSUMER,
                               {{"bootstrap.servers", o.bootstrap},
                                {"group.id", "weft-perf"},
                                {"enable.auto.commit", "false"},
                                {"fetch.wait.max.ms", latency != nullptr ? "10" : "100"},
                                {"client.id", "weft-perf"}},
                               error);
  PhaseResult result;
  if (!rk) return result;
  rd_kafka_poll_set_consumer(rk.get());
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(static_cast<int>(p.partitions));
  for (std::uint32_t i = 0; i < p.partitions; ++i)
    rd_kafka_topic_partition_list_add(list, topic.c_str(), static_cast<std::int32_t>(i))->offset = from_end ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
  rd_kafka_assign(rk.get(), list);
  rd_kafka_topic_partition_list_destroy(list);
  if (ready != nullptr) {
    // Wait until the fetcher is positioned before the producer starts.
    for (int i = 0; i < 20; ++i) {
      rd_kafka_message_t* m = rd_kafka_consumer_poll(rk.get(), 50);
      if (m != nullptr) rd_kafka_message_destroy(m);
    }
    ready->store(true);
  }
  std::int64_t start = 0;
  std::int64_t last = monotonic_ns();
  // The latency run takes one record a call, each timed as it comes; the backlog takes up to
  // kBatch a call, as a throughput-minded application does (confluent-kafka's consume(n)). Such a
  // call returns early only once full, so it never asks for more than are still to come (the last
  // call would otherwise wait out its timeout inside the timed run).
  constexpr std::size_t kBatch = 1024;
  static_assert(kBatch > 1);
  std::vector<rd_kafka_message_t*> batch(latency != nullptr ? 1 : kBatch);
  rd_kafka_queue_t* queue = rd_kafka_queue_get_consumer(rk.get());
  while (result.records < records && !g_stop.load(std::memory_order_relaxed)) {
    const ssize_t got = latency != nullptr ? ((batch[0] = rd_kafka_consumer_poll(rk.get(), 100)) != nullptr ? 1 : 0)
                                           : rd_kafka_consume_batch_queue(queue, 5, batch.data(),
                                                                          std::min<std::size_t>(batch.size(), records - result.records));
    const std::int64_t now = monotonic_ns();
    if (got <= 0) {
      if (now - last > 30'000'000'000) {
        error = "no record for 30 s after " + std::to_string(result.records);
        break;
      }
      continue;
    }
    for (ssize_t i = 0; i < got; ++i) {
      rd_kafka_message_t* m = batch[static_cast<std::size_t>(i)];
      if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (start == 0) start = now;
        ++result.records;
        if (latency != nullptr && m->len >= sizeof(std::int64_t)) {
          std::int64_t sent = 0;
          std::memcpy(&sent, m->payload, sizeof sent);
          latency->record(static_cast<std::uint64_t>(std::max<std::int64_t>(now - sent, 0)));
        }
        last = now;
      }
      rd_kafka_message_destroy(m);
    }
  }
  if (queue != nullptr) rd_kafka_queue_destroy(queue);
  result.seconds = start == 0 ? 0 : static_cast<double>(last - start) / 1e9;
  rd_kafka_consumer_close(rk.get());
  return result;
}

// The listener alone, without librdkafka's per-record cost: a bare client that sends one
// pre-encoded ~1 MB batch of records again and again (Produce v7, up to 16 requests in flight),
// then reads the partition back with Fetch v11 (16 MiB per fetch).
// Connects to the first bootstrap address (kafka::WireConnection: Nagle off).
std::optional<kafka::WireConnection> connect_wire(const std::string& bootstrap, std::string& error) {
  Result<kafka::WireConnection> opened = kafka::WireConnection::open(bootstrap.substr(0, bootstrap.find(',')), 5'000);
  if (!opened.ok()) {
    error = opened.error().message;
    return std::nullopt;
  }
  return std::move(*opened);
}

std::string wire_request(std::int16_t key, std::int16_t version, std::int32_t correlation, const std::string& body) {
  return kafka::request_frame(key, version, correlation, "weft-perf-wire", body);
}

// A Produce v7 answer's first partition error: correlation id, responses [topic [partition,
// error, ...]], so it sits at a fixed place. Nothing when the answer does not parse.
std::optional<std::int16_t> produce_error(const std::string& frame) {
  kafka::Reader r(std::as_bytes(std::span(frame.data(), frame.size())));
  (void)r.i32();
  (void)r.array(false);
  (void)r.string(false);
  (void)r.array(false);
  (void)r.i32();
  const std::int16_t code = r.i16();
  if (!r.ok()) return std::nullopt;
  return code;
}

PhaseResult wire_produce_phase(const RemoteOptions& o, const PerfOptions& p, const std::string& topic, std::uint64_t records, std::string& error) {
  PhaseResult result;
  std::optional<kafka::WireConnection> client = connect_wire(o.bootstrap, error);
  if (!client) return result;
  // One batch of ~1 MB of records (Kafka's default batch.size for librdkafka), encoded once.
  const RecordValues values(p.record_size);
  const std::uint32_t per_batch = std::max<std::uint32_t>(1, static_cast<std::uint32_t>(1'000'000 / (p.record_size + 16)));
  std::vector<std::byte> buffer(std::size_t{per_batch} * (p.record_size + 32) + 4096);
  BatchBuilder builder(buffer);
  for (std::uint32_t i = 0; i < per_batch; ++i) {
    RecordInput r;
    r.value = std::as_bytes(std::span(values.at(i), values.size()));
    r.timestamp_ms = wall_clock_ms();
    if (!builder.append(r)) break;
  }
  const std::span<std::byte> batch = builder.finish();
  const std::int32_t in_batch = builder.record_count();
  std::vector<std::string> requests;
  for (std::uint32_t partition = 0; partition < p.partitions; ++partition) {
    kafka::Writer body;
    body.nullable_string(std::nullopt, false);
    body.i16(static_cast<std::int16_t>(p.acks == "all" ? -1 : std::stoi(p.acks)));
    body.i32(30'000);
    body.array(1, false);
    body.string(topic, false);
    body.array(1, false);
    body.i32(static_cast<std::int32_t>(partition));
    body.bytes(batch, false);
    requests.push_back(body.take());
  }
  const std::uint64_t total = (records + static_cast<std::uint64_t>(in_batch) - 1) / static_cast<std::uint64_t>(in_batch);
  constexpr std::uint64_t kInFlight = 16;
  std::uint64_t sent = 0, answered = 0;
  // Untimed and uncounted: one batch to every partition until each is taken, as a Kafka client
  // retries LEADER_NOT_AVAILABLE (5) and NOT_LEADER_OR_FOLLOWER (6) while a new topic's leaders
  // take their roles. (The fetch phase reads the first `records` records, so the extra batches
  // do not count there either.)
  for (std::size_t partition = 0; partition < requests.size(); ++partition) {
    for (int attempt = 0;; ++attempt) {
      if (!client->send_all(wire_request(0, 7, -1, requests[partition])).ok()) {
        error = "the connection closed while sending";
        return result;
      }
      Result<std::string> answer = client->read_frame(30'000);
      if (!answer.ok()) {
        error = "no answer to a produce within 30 s";
        return result;
      }
      const std::optional<std::int16_t> code = produce_error(*answer);
      if (code == 0) break;
      if (!code || (*code != 5 && *code != 6) || attempt >= 200) {
        error = "produce answered with error " + std::to_string(code.value_or(-1));
        return result;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  const std::int64_t start = monotonic_ns();
  while (answered < total && !g_stop.load(std::memory_order_relaxed)) {
    while (sent < total && sent - answered < kInFlight) {
      if (!client->send_all(wire_request(0, 7, static_cast<std::int32_t>(sent), requests[sent % requests.size()])).ok()) {
        error = "the connection closed while sending";
        return result;
      }
      ++sent;
    }
    Result<std::string> answer = client->read_frame(30'000);
    if (!answer.ok()) {
      error = "no answer to a produce within 30 s";
      break;
    }
    const std::optional<std::int16_t> code = produce_error(*answer);
    if (code != 0) {
      ++result.failed;
      if (error.empty()) error = "produce answered with error " + std::to_string(code.value_or(-1));
    }
    ++answered;
  }
  result.seconds = static_cast<double>(monotonic_ns() - start) / 1e9;
  result.records = (answered - result.failed) * static_cast<std::uint64_t>(in_batch);
  return result;
}

PhaseResult wire_fetch_phase(const RemoteOptions& o, const PerfOptions& p, const std::string& topic, std::uint64_t records, std::string& error) {
  PhaseResult result;
  std::optional<kafka::WireConnection> client = connect_wire(o.bootstrap, error);
  if (!client) return result;
  std::vector<std::int64_t> next(p.partitions, 0);
  std::string frame;
  const std::int64_t start = monotonic_ns();
  for (std::int32_t correlation = 0; result.records < records && !g_stop.load(std::memory_order_relaxed); ++correlation) {
    kafka::Writer body;
    body.i32(-1);
    body.i32(500);
    body.i32(1);
    body.i32(64 << 20);
    body.i8(0);
    body.i32(0);
    body.i32(-1);
    body.array(1, false);
    body.string(topic, false);
    body.array(p.partitions, false);
    for (std::uint32_t partition = 0; partition < p.partitions; ++partition) {
      body.i32(static_cast<std::int32_t>(partition));
      body.i32(-1);
      body.i64(next[partition]);
      body.i64(-1);
      body.i32(16 << 20);
    }
    body.array(0, false);
    body.string("", false);
    Result<std::string> answer = Error{Errc::kUnavailable, "send failed"};
    if (client->send_all(wire_request(1, 11, correlation, body.take())).ok()) answer = client->read_frame(30'000);
    if (!answer.ok()) {
      error = "fetch: the connection closed or nothing came within 30 s";
      break;
    }
    frame = std::move(*answer);
    kafka::Reader r(std::as_bytes(std::span(frame.data(), frame.size())));
    (void)r.i32();
    (void)r.i32();
    (void)r.i16();
    (void)r.i32();
    const std::int32_t topics = r.array(false);
    bool progress = false;
    for (std::int32_t t = 0; t < topics && r.ok(); ++t) {
      (void)r.string(false);
      const std::int32_t parts = r.array(false);
      for (std::int32_t i = 0; i < parts && r.ok(); ++i) {
        const std::int32_t partition = r.i32();
        const std::int16_t code = r.i16();
        (void)r.i64();
        (void)r.i64();
        (void)r.i64();
        const std::int32_t aborted = r.array(false, true, 16);
        for (std::int32_t a = 0; a < aborted && r.ok(); ++a) (void)r.i64(), (void)r.i64();
        (void)r.i32();
        const std::optional<std::span<const std::byte>> data = r.nullable_bytes(false);
        if (code != 0 || !data || partition < 0 || static_cast<std::uint32_t>(partition) >= p.partitions) continue;
        // Whole batches count; a cut one at the end is fetched again.
        for (std::size_t at = 0; at + kBatchHeaderBytes <= data->size();) {
          const std::byte* b = data->data() + at;
          const std::size_t size = static_cast<std::size_t>(wire::load_be32(b + batch_field::kBatchLength)) + kBatchLogOverhead;
          if (at + size > data->size()) break;
          const std::int64_t base = wire::load_be64(b);
          const std::int32_t count = wire::load_be32(b + batch_field::kRecordCount);
          if (base + count > next[static_cast<std::size_t>(partition)]) {
            result.records += static_cast<std::uint64_t>(base + count - std::max(base, next[static_cast<std::size_t>(partition)]));
            next[static_cast<std::size_t>(partition)] = base + count;
            progress = true;
          }
          at += size;
        }
      }
    }
    if (!r.ok()) {
      error = "fetch: a response that does not parse: " + r.error();
      break;
    }
    if (!progress && monotonic_ns() - start > 60'000'000'000) {
      error = "fetch: no progress";
      break;
    }
  }
  result.seconds = static_cast<double>(monotonic_ns() - start) / 1e9;
  return result;
}

}  // namespace

int run_remote_perf(const RemoteOptions& o, const PerfOptions& p) {
  struct sigaction sa{};
  sa.sa_handler = [](int signal) { g_stop.store(signal, std::memory_order_relaxed); };
  sigaction(SIGINT, &sa, nullptr);
  const double tcp = p.baselines ? weft::bench::tcp_loopback_gb_per_sec(2.0) : 0;
  std::string error;
  KafkaHandle admin = make_client(o, RD_KAFKA_PRODUCER, {{"bootstrap.servers", o.bootstrap}}, error);
  if (!admin) return fail("connecting to " + o.bootstrap + ": " + error);
  const std::string topic = "weft-perf-" + std::to_string(getpid());
  // The node's defaults unless --ring-bytes is given (the same pair a local run sets).
  std::vector<std::pair<std::string, std::string>> configs;
  if (p.ring_bytes_given)
    configs = {{"ring.capacity.bytes", std::to_string(p.ring_bytes)},
               {"max.batch.bytes", std::to_string(perf_max_batch_bytes(p.ring_bytes))}};
  if (!admin_topic(admin.get(), topic, static_cast<int>(p.partitions), error, configs)) return fail("creating " + topic + ": " + error);
  if (partition_leaders(admin.get(), topic, error).empty()) return fail(topic + ": " + error);
  // What the node made of the topic, not what was asked: 0 when it does not say.
  const std::uint64_t ring_bytes = std::strtoull(topic_config(admin.get(), topic, "ring.capacity.bytes").c_str(), nullptr, 10);

  // The paced run first, on a topic of its own: the latency of a node serving that rate, not of
  // one whose kernel is still writing back the GBs of the throughput runs (p99 2-3 ms then,
  // 0.6-1.8 ms before them: docs/performance.md).
  LatencyHistogram latency;
  LatencyHistogram acked;
  PhaseResult paced;
  std::uint64_t paced_fetched = 0;
  if (p.latency_records > 0) {
    const std::string paced_topic = topic + "-paced";
    if (!admin_topic(admin.get(), paced_topic, static_cast<int>(p.partitions), error, configs)) return fail("creating " + paced_topic + ": " + error);
    if (partition_leaders(admin.get(), paced_topic, error).empty()) return fail(paced_topic + ": " + error);
    std::atomic<bool> ready{false};
    PhaseResult seen;
    std::string fetch_error;
    std::thread reader([&] { seen = fetch_phase(o, p, paced_topic, p.latency_records, true, &latency, &ready, fetch_error); });
    for (int i = 0; i < 2000 && !ready.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    paced = produce_phase(o, p, paced_topic, p.latency_records, p.latency_rate, true, error, &acked);
    reader.join();
    paced_fetched = seen.records;
    if (!fetch_error.empty()) std::fprintf(stderr, "weft: latency run: %s\n", fetch_error.c_str());
    (void)admin_topic(admin.get(), paced_topic, 0, error);
  }

  error.clear();  // a failure of the paced run is not the throughput run's
  if (g_stop.load(std::memory_order_relaxed)) {  // interrupted during the paced run
    (void)admin_topic(admin.get(), topic, 0, error);
    return fail("interrupted");
  }
  const std::uint64_t records = p.records;
  const PhaseResult produced = produce_phase(o, p, topic, records, p.rate, false, error);
  if (produced.records == 0) return fail("producing: " + error);
  std::string fetch_error;
  const PhaseResult fetched = fetch_phase(o, p, topic, produced.records, false, nullptr, nullptr, fetch_error);
  // A run that did not read back all it sent, or was interrupted, is not a measurement: it fails
  // (read again at the end: the bare client's phases come after).
  const auto complete = [&] {
    return produced.failed == 0 && fetched.records >= produced.records && g_stop.load(std::memory_order_relaxed) == 0 &&
           paced_fetched >= (p.latency_records > 0 ? paced.records : 0);
  };

  // The same again with a bare client: what the listener takes without librdkafka's cost per record.
  const std::string wire_topic = topic + "-wire";
  PhaseResult wire_produced, wire_fetched;
  if (admin_topic(admin.get(), wire_topic, static_cast<int>(p.partitions), error, configs)) {
    std::string why;
    const std::string leader = sole_leader(admin.get(), wire_topic, why);
    if (leader.empty()) {
      std::fprintf(stderr, "weft: the bare client's run is skipped: %s\n", why.c_str());
    } else {
      const RemoteOptions at_leader{leader, {}};  // the bare client has no librdkafka settings
      std::string wire_error;
      wire_produced = wire_produce_phase(at_leader, p, wire_topic, records, wire_error);
      if (wire_produced.failed > 0 || !wire_error.empty())
        std::fprintf(stderr, "weft: the bare client: %llu produce requests failed: %s\n", static_cast<unsigned long long>(wire_produced.failed),
                     wire_error.c_str());
      if (wire_produced.records > 0) wire_fetched = wire_fetch_phase(at_leader, p, wire_topic, wire_produced.records, error);
    }
    (void)admin_topic(admin.get(), wire_topic, 0, error);
  }

  (void)admin_topic(admin.get(), topic, 0, error);

  const double record_bytes = static_cast<double>(p.record_size);
  const double produce_gbs = produced.seconds > 0 ? static_cast<double>(produced.records) * record_bytes / produced.seconds / 1e9 : 0;
  const double fetch_gbs = fetched.seconds > 0 ? static_cast<double>(fetched.records) * record_bytes / fetched.seconds / 1e9 : 0;
  auto us = [&](double q) { return static_cast<double>(latency.percentile(q)) / 1000.0; };
  auto gbs = [&](const PhaseResult& r) { return r.seconds > 0 ? static_cast<double>(r.records) * record_bytes / r.seconds / 1e9 : 0.0; };
  if (p.json) {
    std::printf("{\"bootstrap\":\"%s\",\"record_size\":%u,\"partitions\":%u,\"acks\":\"%s\",\"compression\":\"%s\",\"ring_bytes\":%llu,\"tcp_loopback_gb_per_s\":%.3f,"
                "\"produce\":{\"records\":%llu,\"seconds\":%.3f,\"records_per_s\":%.0f,\"gb_per_s\":%.3f,\"vs_tcp\":%.3f,\"failed\":%llu},"
                "\"fetch\":{\"records\":%llu,\"seconds\":%.3f,\"records_per_s\":%.0f,\"gb_per_s\":%.3f,\"vs_tcp\":%.3f},"
                "\"wire_produce\":{\"records\":%llu,\"gb_per_s\":%.3f,\"vs_tcp\":%.3f},\"wire_fetch\":{\"records\":%llu,\"gb_per_s\":%.3f,\"vs_tcp\":%.3f},"
                "\"latency\":{\"records\":%llu,\"rate\":%llu,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f},"
                "\"ack_latency\":{\"records\":%llu,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f}}\n",
                o.bootstrap.c_str(), p.record_size, p.partitions, p.acks.c_str(), p.compression.c_str(),
                static_cast<unsigned long long>(ring_bytes),
                tcp, static_cast<unsigned long long>(produced.records),
                produced.seconds, static_cast<double>(produced.records) / std::max(produced.seconds, 1e-9), produce_gbs,
                tcp > 0 ? produce_gbs / tcp : 0, static_cast<unsigned long long>(produced.failed), static_cast<unsigned long long>(fetched.records),
                fetched.seconds, static_cast<double>(fetched.records) / std::max(fetched.seconds, 1e-9), fetch_gbs, tcp > 0 ? fetch_gbs / tcp : 0,
                static_cast<unsigned long long>(wire_produced.records), gbs(wire_produced), tcp > 0 ? gbs(wire_produced) / tcp : 0,
                static_cast<unsigned long long>(wire_fetched.records), gbs(wire_fetched), tcp > 0 ? gbs(wire_fetched) / tcp : 0,
                static_cast<unsigned long long>(latency.count()), static_cast<unsigned long long>(p.latency_rate), us(0.5), us(0.99), us(0.999),
                static_cast<double>(latency.max()) / 1000.0, static_cast<unsigned long long>(acked.count()),
                static_cast<double>(acked.percentile(0.5)) / 1000.0, static_cast<double>(acked.percentile(0.99)) / 1000.0,
                static_cast<double>(acked.percentile(0.999)) / 1000.0, static_cast<double>(acked.max()) / 1000.0);
    if (fetched.records < produced.records && !fetch_error.empty()) std::fprintf(stderr, "weft: perf: %s\n", fetch_error.c_str());
    return complete() ? 0 : 1;
  }
  const std::string ring = std::to_string(ring_bytes) + "-byte rings" + (p.ring_bytes_given ? "" : " (the node's default)");
  std::printf("weft perf over the Kafka protocol: %s, %u-byte records, %u partitions, %s, acks=%s, compression=%s (librdkafka %s)\n",
              o.bootstrap.c_str(), p.record_size, p.partitions, ring.c_str(), p.acks.c_str(), p.compression.c_str(), rd_kafka_version_str());
  if (tcp > 0) std::printf("  baseline   one TCP stream on loopback: %.2f GB/s (%.1f Gbit/s)\n", tcp, tcp * 8);
  std::printf("  produce    %llu records in %.2f s: %.0f records/s, %.3f GB/s of record bytes%s\n",
              static_cast<unsigned long long>(produced.records), produced.seconds,
              static_cast<double>(produced.records) / std::max(produced.seconds, 1e-9), produce_gbs,
              tcp > 0 ? (" = " + std::to_string(static_cast<int>(produce_gbs / tcp * 100 + 0.5)) + "% of the baseline").c_str() : "");
  std::printf("  fetch      %llu records of backlog in %.2f s: %.0f records/s, %.3f GB/s%s\n",
              static_cast<unsigned long long>(fetched.records), fetched.seconds,
              static_cast<double>(fetched.records) / std::max(fetched.seconds, 1e-9), fetch_gbs,
              tcp > 0 ? (" = " + std::to_string(static_cast<int>(fetch_gbs / tcp * 100 + 0.5)) + "% of the baseline").c_str() : "");
  auto percent = [&](double v) { return tcp > 0 ? " = " + std::to_string(static_cast<int>(v / tcp * 100 + 0.5)) + "% of the baseline" : std::string(); };
  std::printf("  bare client, pre-encoded 1 MB batches%s (the listener without librdkafka's cost per record):\n",
              p.compression == "none" ? "" : ", uncompressed");
  std::printf("  produce    %llu records in %.2f s: %.3f GB/s%s\n", static_cast<unsigned long long>(wire_produced.records), wire_produced.seconds,
              gbs(wire_produced), percent(gbs(wire_produced)).c_str());
  std::printf("  fetch      %llu records in %.2f s: %.3f GB/s%s\n", static_cast<unsigned long long>(wire_fetched.records), wire_fetched.seconds,
              gbs(wire_fetched), percent(gbs(wire_fetched)).c_str());
  if (p.latency_records > 0)
    std::printf("  latency    %llu records at %llu/s, produce to fetch: p50 %.0f us, p99 %.0f us, p99.9 %.0f us, max %.0f us\n",
                static_cast<unsigned long long>(latency.count()), static_cast<unsigned long long>(p.latency_rate), us(0.5), us(0.99),
                us(0.999), static_cast<double>(latency.max()) / 1000.0);
  if (p.latency_records > 0 && acked.count() > 0)
    std::printf("  acks=%s    same records, produce to acknowledgement: p50 %.0f us, p99 %.0f us, p99.9 %.0f us, max %.0f us\n", p.acks.c_str(),
                static_cast<double>(acked.percentile(0.5)) / 1000.0, static_cast<double>(acked.percentile(0.99)) / 1000.0,
                static_cast<double>(acked.percentile(0.999)) / 1000.0, static_cast<double>(acked.max()) / 1000.0);
  if (produced.failed > 0) std::printf("  %llu records were not delivered: %s\n", static_cast<unsigned long long>(produced.failed), error.c_str());
  if (fetched.records < produced.records)
    std::printf("  %llu of the %llu records produced were fetched back%s%s\n", static_cast<unsigned long long>(fetched.records),
                static_cast<unsigned long long>(produced.records), fetch_error.empty() ? "" : ": ", fetch_error.c_str());
  if (g_stop.load(std::memory_order_relaxed) != 0) std::printf("  interrupted: the figures cover part of the run\n");
  if (paced_fetched < (p.latency_records > 0 ? paced.records : 0))
    std::printf("  latency run: %llu of the %llu records produced were fetched\n", static_cast<unsigned long long>(paced_fetched),
                static_cast<unsigned long long>(paced.records));
  return complete() ? 0 : 1;
}

}  // namespace weft::cli

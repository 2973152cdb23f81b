#include "weft/storage/etcd_metadata_store.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "http_client.h"

namespace weft::storage {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::string_view kBase64Digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// etcd's gateway carries keys and values (protobuf bytes) as base64 with padding.
std::string base64(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    const std::size_t n = std::min<std::size_t>(3, bytes.size() - i);
    std::uint32_t group = 0;
    for (std::size_t j = 0; j < 3; ++j)
      group = (group << 8) | (j < n ? static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i + j])) : 0U);
    for (std::size_t j = 0; j < 4; ++j)
      out.push_back(j <= n ? kBase64Digits[(group >> (18 - 6 * j)) & 0x3f] : '=');
  }
  return out;
}

std::optional<std::string> unbase64(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    std::uint32_t group = 0;
    std::size_t padding = 0;
    for (std::size_t j = 0; j < 4; ++j) {
      const char c = text[i + j];
      std::uint32_t digit = 0;
      if (c == '=' && j >= 2 && i + 4 == text.size()) {
        ++padding;
      } else {
        const std::size_t found = kBase64Digits.find(c);
        if (found == std::string_view::npos || padding > 0) return std::nullopt;
        digit = static_cast<std::uint32_t>(found);
      }
      group = (group << 6) | digit;
    }
    for (std::size_t j = 0; j < 3 - padding; ++j) out.push_back(static_cast<char>((group >> (16 - 8 * j)) & 0xff));
  }
  return out;
}

// etcd's rule for "every key with this prefix": the prefix with its last byte below 0xff
// incremented (trailing 0xff bytes dropped); "\0", every key from the start, when none is.
std::string range_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    const auto last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

// etcd's keys cannot be empty: an empty prefix starts at "\0", the least key.
std::string range_start(std::string_view prefix) { return prefix.empty() ? std::string(1, '\0') : std::string(prefix); }

Error bad_answer(const std::string& label, std::string_view path, std::string_view what) {
  return Error{Errc::kCorrupt, label + ": " + std::string(path) + ": " + std::string(what)};
}

// Fields at their default value are left out of the gateway's answers, and int64s are strings.
Result<std::int64_t> int64_field(const json& object, const char* name, const std::string& label, std::string_view path) {
  const auto it = object.find(name);
  if (it == object.end() || it->is_null()) return std::int64_t{0};
  if (it->is_number_integer()) return it->get<std::int64_t>();
  if (it->is_string()) {
    const std::string& text = it->get_ref<const std::string&>();
    std::int64_t value = 0;
    const auto [end, parse_error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (parse_error == std::errc{} && end == text.data() + text.size()) return value;
  }
  return bad_answer(label, path, std::string("'") + name + "' is not an int64");
}

Result<std::string> bytes_field(const json& object, const char* name, const std::string& label, std::string_view path) {
  const auto it = object.find(name);
  if (it == object.end() || it->is_null()) return std::string();
  if (it->is_string())
    if (std::optional<std::string> bytes = unbase64(it->get_ref<const std::string&>())) return std::move(*bytes);
  return bad_answer(label, path, std::string("'") + name + "' is not base64");
}

bool bool_field(const json& object, const char* name) {
  const auto it = object.find(name);
  return it != object.end() && it->is_boolean() && it->get<bool>();
}

std::string string_field(const json& object, const char* name) {
  const auto it = object.find(name);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

Result<KeyValue> parse_kv(const json& kv, const std::string& label, std::string_view path) {
  if (!kv.is_object()) return bad_answer(label, path, "a key-value that is not an object");
  KeyValue out;
  WEFT_TRY(out.key, bytes_field(kv, "key", label, path));
  WEFT_TRY(out.value, bytes_field(kv, "value", label, path));
  WEFT_TRY(out.create_revision, int64_field(kv, "create_revision", label, path));
  WEFT_TRY(out.mod_revision, int64_field(kv, "mod_revision", label, path));
  WEFT_TRY(out.lease, int64_field(kv, "lease", label, path));
  return out;
}

Result<std::int64_t> header_revision(const json& answer, const std::string& label, std::string_view path) {
  const auto header = answer.find("header");
  if (header == answer.end() || !header->is_object()) return bad_answer(label, path, "no header in the answer");
  return int64_field(*header, "revision", label, path);
}

Errc from_grpc(std::int64_t code) {
  switch (code) {
    case 1: return Errc::kUnavailable;         // CANCELLED
    case 3: return Errc::kInvalidArgument;
    case 4: return Errc::kUnavailable;         // DEADLINE_EXCEEDED
    case 5: return Errc::kNotFound;
    case 6: return Errc::kAlreadyExists;
    case 7: return Errc::kPermissionDenied;
    case 8: return Errc::kResourceExhausted;
    case 9: return Errc::kFailedPrecondition;
    case 10: return Errc::kAborted;
    case 11: return Errc::kOutOfRange;         // "required revision has been compacted"
    case 12: return Errc::kUnsupported;
    case 14: return Errc::kUnavailable;        // no leader, stopping
    case 15: return Errc::kDataLoss;
    case 16: return Errc::kPermissionDenied;   // UNAUTHENTICATED
    default: return Errc::kInternal;
  }
}

Errc from_http_status(int status) {
  switch (status) {
    case 400: return Errc::kInvalidArgument;
    case 401:
    case 403: return Errc::kPermissionDenied;
    case 404: return Errc::kNotFound;
    case 429: return Errc::kResourceExhausted;
    case 502:
    case 503:
    case 504: return Errc::kUnavailable;
    default: return Errc::kInternal;
  }
}

// A non-2xx answer: {"error": "...", "message": "...", "code": <gRPC code>}.
Error gateway_error(const std::string& label, std::string_view path, const HttpResponse& response) {
  const json body = json::parse(response.body, nullptr, false);
  std::string message = body.is_object() ? string_field(body, "message") : std::string();
  Errc code = from_http_status(response.status);
  if (const auto it = body.is_object() ? body.find("code") : body.end(); it != body.end() && it->is_number_integer())
    code = from_grpc(it->get<std::int64_t>());
  if (message.empty()) message = "HTTP " + std::to_string(response.status) + ": " + response.body.substr(0, 200);
  return Error{code, label + ": " + std::string(path) + ": " + message};
}

// An error inside a stream: {"error": {"grpc_code": 14, "http_code": 503, "message": "..."}}.
Error stream_error(const std::string& label, std::string_view path, const json& error) {
  Errc code = Errc::kUnavailable;
  if (const auto it = error.find("grpc_code"); it != error.end() && it->is_number_integer())
    code = from_grpc(it->get<std::int64_t>());
  std::string message = string_field(error, "message");
  // Never the value itself: a deeply nested one would overflow the stack of dump(), which recurses.
  if (message.empty()) message = error.is_string() ? error.get<std::string>().substr(0, 200) : std::string("an error without a message (a JSON ") + error.type_name() + ")";
  return Error{code, label + ": " + std::string(path) + ": " + message};
}

int ms_until(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::max<std::int64_t>(left, 0));
}

class EtcdWatch final : public MetadataWatch {
 public:
  EtcdWatch(const HttpEndpoint& endpoint, const std::string& label, std::int64_t from_revision)
      : connection_(endpoint, label, /*keep_probing=*/true), from_revision_(from_revision) {}

  // Opens the stream and waits for etcd to confirm the watch, so that every change after this
  // returns is seen.
  Result<void> start(const json& request, int timeout_ms) {
    const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    WEFT_TRY(HttpResponse response, connection_.post_stream(kPath, request.dump(), timeout_ms));
    if (response.status >= 300) return gateway_error(connection_.label(), kPath, response);
    bool created = false;
    for (;;) {
      Result<bool> open = connection_.read_stream(text_, ms_until(deadline));
      WEFT_TRY_VOID(parse_lines(pending_, &created));
      if (created) return ok();
      if (!open.ok()) return std::move(open).error();
      if (!*open) return Error{Errc::kUnavailable, connection_.label() + ": the watch ended before etcd created it"};
      if (Clock::now() >= deadline)
        return Error{Errc::kUnavailable, connection_.label() + ": the watch not created within " + std::to_string(timeout_ms) + " ms"};
    }
  }

  Result<void> next(std::vector<WatchEvent>& out, int timeout_ms) override {
    if (!pending_.empty()) {
      out.insert(out.end(), pending_.begin(), pending_.end());
      pending_.clear();
      return ok();
    }
    if (ended_) return *ended_;
    const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0));
    for (;;) {
      const std::size_t before = out.size();
      Result<bool> open = connection_.read_stream(text_, ms_until(deadline));
      if (Result<void> parsed = parse_lines(out, nullptr); !parsed.ok())
        ended_ = std::move(parsed).error();
      else if (!open.ok())
        ended_ = std::move(open).error();
      else if (!*open)
        ended_ = Error{Errc::kUnavailable, connection_.label() + ": etcd ended the watch (stopping?); watch again"};
      if (ended_) connection_.close();
      if (out.size() > before) return ok();  // the events first; the end comes with the next call
      if (ended_) return *ended_;
      if (Clock::now() >= deadline) return ok();
    }
  }

  int fd() const noexcept override { return connection_.fd(); }

 private:
  static constexpr std::string_view kPath = "/v3/watch";

  // Parses each whole line of text_ (one JSON object each): events to `out`; etcd's
  // confirmation sets `created`. An error is the end of the watch.
  Result<void> parse_lines(std::vector<WatchEvent>& out, bool* created) {
    const std::string& label = connection_.label();
    std::size_t start = 0;
    std::size_t eol = 0;
    Result<void> result = ok();
    while (result.ok() && (eol = text_.find('\n', start)) != std::string::npos) {
      const std::string_view line = std::string_view(text_).substr(start, eol - start);
      start = eol + 1;
      if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      const json message = json::parse(line, nullptr, false);
      if (message.is_discarded() || !message.is_object()) {
        result = bad_answer(label, kPath, "a line of the stream is not a JSON object");
        break;
      }
      if (const auto error = message.find("error"); error != message.end()) {
        result = stream_error(label, kPath, *error);
        break;
      }
      const auto body = message.find("result");
      if (body == message.end() || !body->is_object()) continue;
      if (bool_field(*body, "created") && created != nullptr) *created = true;
      if (const auto events = body->find("events"); events != body->end() && events->is_array()) {
        for (const json& event : *events) {
          const auto kv = event.find("kv");
          if (kv == event.end()) {
            result = bad_answer(label, kPath, "an event without a key-value");
            break;
          }
          Result<KeyValue> parsed = parse_kv(*kv, label, kPath);
          if (!parsed.ok()) {
            result = std::move(parsed).error();
            break;
          }
          const WatchEvent::Type type =
              string_field(event, "type") == "DELETE" ? WatchEvent::Type::kDelete : WatchEvent::Type::kPut;
          out.push_back(WatchEvent{type, std::move(parsed).value()});
        }
      }
      if (result.ok() && bool_field(*body, "canceled")) {
        Result<std::int64_t> compacted = int64_field(*body, "compact_revision", label, kPath);
        if (compacted.ok() && *compacted > 0)
          result = Error{Errc::kOutOfRange, label + ": revision " + std::to_string(from_revision_) +
                                                " was compacted (the oldest kept is " + std::to_string(*compacted) +
                                                "); re-read, then watch again"};
        else
          result = Error{Errc::kUnavailable, label + ": etcd cancelled the watch: " + string_field(*body, "cancel_reason")};
      }
    }
    text_.erase(0, start);
    // etcd's lines are an event batch each (a few MiB at most); one that never ends is not etcd,
    // and would grow without bound.
    if (result.ok() && text_.size() > kMaxLineBytes)
      result = bad_answer(label, kPath, "a line of the stream is longer than " + std::to_string(kMaxLineBytes >> 20) + " MiB");
    return result;
  }

  static constexpr std::size_t kMaxLineBytes = std::size_t{64} << 20;

  HttpConnection connection_;
  std::int64_t from_revision_;
  std::string text_;                 // stream bytes not parsed yet: a partial line
  std::vector<WatchEvent> pending_;  // events that came with etcd's confirmation
  std::optional<Error> ended_;       // once set, what every next() answers
};

class EtcdMetadataStore final : public MetadataStore {
 public:
  EtcdMetadataStore(HttpEndpoint endpoint, EtcdOptions options)
      : endpoint_(std::move(endpoint)),
        label_("etcd at " + endpoint_.name),
        options_(options),
        kv_(endpoint_, label_),
        leases_(endpoint_, label_) {}

  Result<std::int64_t> put(std::string_view key, std::string_view value, std::int64_t lease) override {
    static constexpr std::string_view kPath = "/v3/kv/put";
    if (key.empty()) return empty_key();
    json request = json::object();
    request["key"] = base64(key);
    request["value"] = base64(value);
    if (lease != 0) request["lease"] = std::to_string(lease);
    WEFT_TRY(const json answer, call(kPath, request));
    return header_revision(answer, label_, kPath);
  }

  Result<std::optional<KeyValue>> get(std::string_view key) override {
    static constexpr std::string_view kPath = "/v3/kv/range";
    if (key.empty()) return empty_key();
    json request = json::object();
    request["key"] = base64(key);
    WEFT_TRY(const json answer, call(kPath, request));
    const auto kvs = answer.find("kvs");
    if (kvs == answer.end() || !kvs->is_array() || kvs->empty()) return std::optional<KeyValue>();
    WEFT_TRY(KeyValue kv, parse_kv(kvs->front(), label_, kPath));
    return std::optional<KeyValue>(std::move(kv));
  }

  Result<RangeResult> list(std::string_view prefix) override {
    static constexpr std::string_view kPath = "/v3/kv/range";
    json request = json::object();
    request["key"] = base64(range_start(prefix));
    request["range_end"] = base64(range_end(prefix));
    WEFT_TRY(const json answer, call(kPath, request));  // in key order: etcd's default
    RangeResult range;
    WEFT_TRY(range.revision, header_revision(answer, label_, kPath));
    if (const auto kvs = answer.find("kvs"); kvs != answer.end() && kvs->is_array()) {
      range.kvs.reserve(kvs->size());
      for (const json& kv : *kvs) {
        WEFT_TRY(KeyValue parsed, parse_kv(kv, label_, kPath));
        range.kvs.push_back(std::move(parsed));
      }
    }
    return range;
  }

  Result<bool> compare_and_put(std::string_view key, std::int64_t expected_mod_revision, std::string_view value,
                               std::int64_t lease, const WriteGuard* guard) override {
    if (key.empty()) return empty_key();
    json put = json::object();
    put["key"] = base64(key);
    put["value"] = base64(value);
    if (lease != 0) put["lease"] = std::to_string(lease);
    json operation = json::object();
    operation["request_put"] = std::move(put);
    return transaction(key, expected_mod_revision, std::move(operation), guard);
  }

  Result<bool> erase(std::string_view key, std::int64_t expected_mod_revision, const WriteGuard* guard) override {
    if (key.empty()) return empty_key();
    json range = json::object();
    range["key"] = base64(key);
    if (expected_mod_revision != 0 || guard != nullptr) {
      json operation = json::object();
      operation["request_delete_range"] = std::move(range);
      // Without an expected revision, only the guard is compared (-1).
      WEFT_TRY(const json answer, transaction_answer(key, expected_mod_revision != 0 ? expected_mod_revision : -1, std::move(operation), guard));
      if (!bool_field(answer, "succeeded")) return false;
      // Succeeded: whether a key was there to delete is in the delete's own answer.
      const auto responses = answer.find("responses");
      if (responses == answer.end() || !responses->is_array() || responses->empty()) return bad_answer(label_, "/v3/kv/txn", "no responses");
      const auto deleted = (*responses)[0].find("response_delete_range");
      if (deleted == (*responses)[0].end()) return bad_answer(label_, "/v3/kv/txn", "no delete answer");
      WEFT_TRY(const std::int64_t count, int64_field(*deleted, "deleted", label_, "/v3/kv/txn"));
      return count > 0;
    }
    static constexpr std::string_view kPath = "/v3/kv/deleterange";
    WEFT_TRY(const json answer, call(kPath, range));
    WEFT_TRY(const std::int64_t deleted, int64_field(answer, "deleted", label_, kPath));
    return deleted > 0;
  }

  Result<std::int64_t> grant_lease(std::int64_t ttl_seconds) override {
    static constexpr std::string_view kPath = "/v3/lease/grant";
    if (ttl_seconds < 1)
      return Error{Errc::kInvalidArgument, label_ + ": a lease lasts at least 1 s (asked for " + std::to_string(ttl_seconds) + " s)"};
    json request = json::object();
    request["TTL"] = std::to_string(ttl_seconds);
    WEFT_TRY(const json answer, call(kPath, request, leases_));
    if (std::string refused = string_field(answer, "error"); !refused.empty())
      return Error{Errc::kUnavailable, label_ + ": " + std::string(kPath) + ": " + refused};
    WEFT_TRY(const std::int64_t id, int64_field(answer, "ID", label_, kPath));
    if (id == 0) return bad_answer(label_, kPath, "a lease granted without an ID");
    return id;
  }

  Result<void> keep_alive(std::int64_t lease) override {
    static constexpr std::string_view kPath = "/v3/lease/keepalive";
    json request = json::object();
    request["ID"] = std::to_string(lease);
    // A stream of one answer: {"result": {...}} or {"error": {...}}.
    WEFT_TRY(const json answer, call(kPath, request, leases_));
    if (const auto error = answer.find("error"); error != answer.end()) return stream_error(label_, kPath, *error);
    const auto result = answer.find("result");
    if (result == answer.end() || !result->is_object()) return bad_answer(label_, kPath, "no result in the answer");
    WEFT_TRY(const std::int64_t ttl, int64_field(*result, "TTL", label_, kPath));
    if (ttl <= 0) return Error{Errc::kNotFound, label_ + ": lease " + std::to_string(lease) + " has expired or was revoked"};
    return ok();
  }

  Result<void> revoke_lease(std::int64_t lease) override {
    static constexpr std::string_view kPath = "/v3/lease/revoke";
    json request = json::object();
    request["ID"] = std::to_string(lease);
    Result<json> answer = call(kPath, request, leases_);  // kNotFound (gRPC 5) for a lease that ended
    if (!answer.ok()) return std::move(answer).error();
    return ok();
  }

  Result<std::unique_ptr<MetadataWatch>> watch(std::string_view prefix, std::int64_t from_revision) override {
    if (from_revision < 0)
      return Error{Errc::kInvalidArgument, label_ + ": cannot watch from revision " + std::to_string(from_revision)};
    json create = json::object();
    create["key"] = base64(range_start(prefix));
    create["range_end"] = base64(range_end(prefix));
    if (from_revision > 0) create["start_revision"] = std::to_string(from_revision);
    json request = json::object();
    request["create_request"] = std::move(create);
    auto watch = std::make_unique<EtcdWatch>(endpoint_, label_, from_revision);
    WEFT_TRY_VOID(watch->start(request, options_.request_timeout_ms));
    return std::unique_ptr<MetadataWatch>(std::move(watch));
  }

 private:
  Error empty_key() const { return Error{Errc::kInvalidArgument, label_ + ": a key cannot be empty"}; }

  // One connection and the requests that take turns on it.
  struct Channel {
    Channel(const HttpEndpoint& endpoint, const std::string& label) : connection(endpoint, label) {}
    std::timed_mutex mutex;  // one request at a time
    HttpConnection connection;
  };

  // One request, its answer parsed; a non-2xx answer becomes the error etcd's code says. The
  // wait for the channel counts against the request's time.
  Result<json> call(std::string_view path, const json& request) { return call(path, request, kv_); }
  Result<json> call(std::string_view path, const json& request, Channel& channel) {
    const std::string body = request.dump();
    const auto start = std::chrono::steady_clock::now();
    std::unique_lock lock(channel.mutex, std::defer_lock);
    if (!lock.try_lock_for(std::chrono::milliseconds(options_.request_timeout_ms)))
      return Error{Errc::kUnavailable, label_ + ": " + std::string(path) + ": other requests held the connection for " +
                                           std::to_string(options_.request_timeout_ms) + " ms"};
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    Result<HttpResponse> response = channel.connection.post(path, body, static_cast<int>(std::max<std::int64_t>(options_.request_timeout_ms - waited, 1)));
    lock.unlock();
    if (!response.ok()) return std::move(response).error();
    if (response->status < 200 || response->status >= 300) return gateway_error(label_, path, *response);
    json answer = json::parse(response->body, nullptr, false);
    if (answer.is_discarded() || !answer.is_object()) return bad_answer(label_, path, "an answer that is not a JSON object");
    return answer;
  }

  // `operation` when `key`'s mod revision is `expected` (0: when it does not exist).
  Result<bool> transaction(std::string_view key, std::int64_t expected, json operation, const WriteGuard* guard) {
    WEFT_TRY(const json answer, transaction_answer(key, expected, std::move(operation), guard));
    return bool_field(answer, "succeeded");
  }

  // A transaction: the operation when `key` has mod revision `expected` (0: when the key does
  // not exist; -1: whatever it is) and the guard's key has the guard's create revision.
  Result<json> transaction_answer(std::string_view key, std::int64_t expected, json operation, const WriteGuard* guard) {
    static constexpr std::string_view kPath = "/v3/kv/txn";
    json request = json::object();
    request["compare"] = json::array();
    if (expected >= 0) {
      json compare = json::object();
      compare["key"] = base64(key);
      compare["result"] = "EQUAL";
      if (expected == 0) {
        compare["target"] = "CREATE";
        compare["create_revision"] = "0";
      } else {
        compare["target"] = "MOD";
        compare["mod_revision"] = std::to_string(expected);
      }
      request["compare"].push_back(std::move(compare));
    }
    if (guard != nullptr) {
      json compare = json::object();
      compare["key"] = base64(guard->key);
      compare["result"] = "EQUAL";
      compare["target"] = "CREATE";
      compare["create_revision"] = std::to_string(guard->create_revision);
      request["compare"].push_back(std::move(compare));
    }
    request["success"] = json::array();
    request["success"].push_back(std::move(operation));
    return call(kPath, request);
  }

  const HttpEndpoint endpoint_;
  const std::string label_;
  const EtcdOptions options_;
  // Leases have a connection of their own: a renewal must not queue behind the key-value
  // requests of other threads (etcd renews a lease without a consensus round; a renewal late
  // behind a slow commit let a healthy node's lease lapse).
  Channel kv_;
  Channel leases_;
};

}  // namespace

Result<std::unique_ptr<MetadataStore>> open_etcd_metadata_store(std::string_view endpoint, EtcdOptions options) {
  if (options.request_timeout_ms < 1)
    return Error{Errc::kInvalidArgument, "etcd: request_timeout_ms must be at least 1 (got " +
                                             std::to_string(options.request_timeout_ms) + ")"};
  WEFT_TRY(HttpEndpoint parsed, parse_http_endpoint(endpoint));
  return std::unique_ptr<MetadataStore>(std::make_unique<EtcdMetadataStore>(std::move(parsed), options));
}

}  // namespace weft::storage

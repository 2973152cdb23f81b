#include "status_metrics.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>
#include <map>

namespace weft::cli {
namespace {

constexpr std::size_t kMaxPageBytes = std::size_t{256} << 20;

std::int64_t now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

// Owns one socket.
class Socket {
 public:
  explicit Socket(int fd) noexcept : fd_(fd) {}
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const noexcept { return fd_; }

 private:
  int fd_;
};

// Waits for `events` on fd until `deadline` (monotonic ms); false at the deadline.
bool wait_for(int fd, short events, std::int64_t deadline) {
  for (;;) {
    const std::int64_t left = deadline - now_ms();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left, 1000)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

std::string human_bytes(std::uint64_t b) {
  char out[32];
  if (b >= (std::uint64_t{1} << 30)) std::snprintf(out, sizeof out, "%.1f GiB", static_cast<double>(b) / (1 << 30));
  else if (b >= (1u << 20)) std::snprintf(out, sizeof out, "%.1f MiB", static_cast<double>(b) / (1 << 20));
  else if (b >= (1u << 10)) std::snprintf(out, sizeof out, "%.1f KiB", static_cast<double>(b) / (1 << 10));
  else std::snprintf(out, sizeof out, "%llu B", static_cast<unsigned long long>(b));
  return out;
}

std::string human_seconds(double s) {
  char out[32];
  if (!(s > 0)) return "-";
  if (s < 1e-6) return "<1 us";
  if (s < 1e-3) std::snprintf(out, sizeof out, "%.0f us", s * 1e6);
  else if (s < 1) std::snprintf(out, sizeof out, "%.1f ms", s * 1e3);
  else std::snprintf(out, sizeof out, "%.2f s", s);
  return out;
}

// Names from the page as a terminal shows them: control characters (a Kafka group id may hold
// any) become '?'.
std::string printable(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return out;
}

std::uint64_t count_of(double v) { return v > 0 && std::isfinite(v) ? static_cast<std::uint64_t>(std::llround(v)) : 0; }

}  // namespace

std::string_view MetricSample::label(std::string_view key) const noexcept {
  for (const auto& [k, v] : labels)
    if (k == key) return v;
  return {};
}

std::vector<MetricSample> parse_metrics_text(std::string_view text) {
  std::vector<MetricSample> out;
  while (!text.empty()) {
    const std::size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || line.front() == '#') continue;
    MetricSample s;
    std::size_t i = line.find_first_of("{ \t");
    if (i == 0 || i == std::string_view::npos) continue;
    s.name = std::string(line.substr(0, i));
    bool good = true;
    if (line[i] == '{') {
      ++i;
      while (good && i < line.size() && line[i] != '}') {
        const std::size_t eq = line.find('=', i);
        if (eq == std::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"') {
          good = false;
          break;
        }
        std::string key(line.substr(i, eq - i));
        std::string value;
        std::size_t k = eq + 2;
        for (; k < line.size() && line[k] != '"'; ++k) {
          if (line[k] == '\\' && k + 1 < line.size()) {
            ++k;
            value += line[k] == 'n' ? '\n' : line[k];
          } else {
            value += line[k];
          }
        }
        if (k >= line.size()) {
          good = false;
          break;
        }
        s.labels.emplace_back(std::move(key), std::move(value));
        i = k + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (!good || i >= line.size()) continue;
      ++i;  // '}'
    }
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    const std::size_t value_end = line.find_first_of(" \t", i);
    const std::string value(line.substr(i, value_end == std::string_view::npos ? std::string_view::npos : value_end - i));
    if (value.empty()) continue;
    char* end = nullptr;
    s.value = std::strtod(value.c_str(), &end);  // also +Inf, -Inf and NaN
    if (end != value.c_str() + value.size()) continue;
    out.push_back(std::move(s));
  }
  return out;
}

double histogram_quantile(double q, std::span<const std::pair<double, double>> buckets) {
  if (buckets.size() < 2 || !(buckets.back().second > 0)) return 0;
  const double rank = std::clamp(q, 0.0, 1.0) * buckets.back().second;
  std::size_t b = 0;
  while (b + 1 < buckets.size() && buckets[b].second < rank) ++b;
  if (b + 1 == buckets.size()) return buckets[b - 1].first;  // in +Inf: the highest finite bound
  const double start = b == 0 ? 0 : buckets[b - 1].first;
  const double before = b == 0 ? 0 : buckets[b - 1].second;
  const double in_bucket = buckets[b].second - before;
  if (!(in_bucket > 0)) return start;
  return start + (buckets[b].first - start) * ((rank - before) / in_bucket);
}

MetricsSummary summarize_metrics(std::span<const MetricSample> samples) {
  MetricsSummary out;
  std::vector<std::string> api_order;
  std::map<std::string, KafkaApiSummary> apis;
  std::map<std::string, std::vector<std::pair<double, double>>> latency;
  std::map<std::string, GroupSummary> groups;
  for (const MetricSample& s : samples) {
    const std::string& n = s.name;
    if (n == "weft_node_info") {
      const std::string pid(s.label("pid"));
      char* end = nullptr;
      const unsigned long v = std::strtoul(pid.c_str(), &end, 10);
      if (!pid.empty() && *end == '\0' && v <= std::numeric_limits<std::uint32_t>::max()) out.pid = static_cast<std::uint32_t>(v);
    } else if (n == "weft_kafka_connections") {
      out.kafka = true;
      out.connections = count_of(s.value);
    } else if (n == "weft_kafka_connections_accepted_total") {
      out.accepted = count_of(s.value);
    } else if (n == "weft_kafka_connections_refused_total") {
      out.refused = count_of(s.value);
    } else if (n == "weft_kafka_bytes_in_total") {
      out.bytes_in = count_of(s.value);
    } else if (n == "weft_kafka_bytes_out_total") {
      out.bytes_out = count_of(s.value);
    } else if (n == "weft_kafka_records_in_total") {
      out.records_in = count_of(s.value);
    } else if (n == "weft_kafka_requests_total" || n == "weft_kafka_request_errors_total") {
      const std::string api(s.label("api"));
      auto [it, added] = apis.try_emplace(api);
      if (added) {
        it->second.api = api;
        api_order.push_back(api);
      }
      (n == "weft_kafka_requests_total" ? it->second.requests : it->second.errors) = count_of(s.value);
    } else if (n == "weft_kafka_request_latency_seconds_bucket") {
      const std::string le(s.label("le"));
      char* end = nullptr;
      const double bound = std::strtod(le.c_str(), &end);
      if (!le.empty() && *end == '\0') latency[std::string(s.label("api"))].emplace_back(bound, s.value);
    } else if (n == "weft_consumer_group_state") {
      GroupSummary& g = groups[std::string(s.label("group"))];
      g.state = s.label("state");
    } else if (n == "weft_consumer_group_committed_offset") {
      groups[std::string(s.label("group"))];
    } else if (n == "weft_consumer_group_lag") {
      GroupSummary& g = groups[std::string(s.label("group"))];
      g.lag += count_of(s.value);
      ++g.partitions;
    }
  }
  for (const std::string& api : api_order) {
    KafkaApiSummary& a = apis[api];
    if (a.requests == 0) continue;
    if (auto it = latency.find(api); it != latency.end()) {
      std::sort(it->second.begin(), it->second.end());
      a.p50_seconds = histogram_quantile(0.5, it->second);
      a.p99_seconds = histogram_quantile(0.99, it->second);
    }
    out.apis.push_back(a);
  }
  for (auto& [name, g] : groups) {
    g.group = name;
    out.groups.push_back(std::move(g));
  }
  return out;
}

Result<std::string> fetch_metrics_page(const std::string& address, std::int64_t timeout_ms) {
  const std::size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size())
    return Error{Errc::kInvalidArgument, "--metrics takes HOST:PORT, not '" + address + "'"};
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::int64_t deadline = now_ms() + timeout_ms;

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int e = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); e != 0)
    return Error{Errc::kInvalidArgument, "metrics address " + address + ": " + gai_strerror(e)};
  std::string why = "no address";
  int fd = -1;
  for (const addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    const int s = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (s < 0) continue;
    int error = 0;
    if (::connect(s, a->ai_addr, a->ai_addrlen) != 0) {
      error = errno;
      if (error == EINPROGRESS) {
        socklen_t length = sizeof error;
        error = wait_for(s, POLLOUT, deadline) && getsockopt(s, SOL_SOCKET, SO_ERROR, &error, &length) == 0 ? error : ETIMEDOUT;
      }
    }
    if (error == 0) fd = s;
    else {
      why = std::strerror(error);
      ::close(s);
    }
  }
  freeaddrinfo(found);
  if (fd < 0) return Error{Errc::kUnavailable, "nothing answers at " + address + " (" + why + ")"};
  Socket socket(fd);

  const std::string request = "GET /metrics HTTP/1.1\r\nHost: " + address + "\r\nAccept: text/plain\r\nConnection: close\r\n\r\n";
  for (std::size_t sent = 0; sent < request.size();) {
    const ssize_t put = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (put > 0) sent += static_cast<std::size_t>(put);
    else if (put < 0 && errno != EAGAIN && errno != EINTR) return Error{Errc::kUnavailable, address + ": " + std::strerror(errno)};
    else if (!wait_for(fd, POLLOUT, deadline)) return Error{Errc::kUnavailable, "no answer from " + address + " in time"};
  }
  std::string response;
  char buffer[16384];
  for (;;) {
    const ssize_t got = ::recv(fd, buffer, sizeof buffer, 0);
    if (got > 0) {
      response.append(buffer, static_cast<std::size_t>(got));
      if (response.size() > kMaxPageBytes) return Error{Errc::kCorrupt, address + ": a page over 256 MiB"};
      continue;
    }
    if (got == 0) break;
    if (errno != EAGAIN && errno != EINTR) return Error{Errc::kUnavailable, address + ": " + std::strerror(errno)};
    if (!wait_for(fd, POLLIN, deadline)) return Error{Errc::kUnavailable, "no whole answer from " + address + " in time"};
  }
  const std::size_t head_end = response.find("\r\n\r\n");
  if (response.compare(0, 5, "HTTP/") != 0 || head_end == std::string::npos)
    return Error{Errc::kCorrupt, address + " did not answer in HTTP"};
  const std::size_t status_at = response.find(' ');
  if (status_at == std::string::npos || response.compare(status_at + 1, 3, "200") != 0)
    return Error{Errc::kCorrupt, address + " answered " + response.substr(0, response.find("\r\n"))};
  std::string body = response.substr(head_end + 4);
  // Content-Length, when given, says whether the page arrived whole.
  std::string head = response.substr(0, head_end);
  std::transform(head.begin(), head.end(), head.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (const std::size_t at = head.find("\r\ncontent-length:"); at != std::string::npos) {
    const unsigned long long length = std::strtoull(head.c_str() + at + 17, nullptr, 10);
    if (body.size() != length) return Error{Errc::kCorrupt, address + ": the page arrived cut short"};
  }
  return body;
}

void print_status_metrics(const std::string& address, std::uint32_t node_pid) {
  if (address.empty() || address == "off") return;
  Result<std::string> page = fetch_metrics_page(address, 3'000);
  if (!page.ok()) {
    std::printf("\nmetrics  not reachable: %s; pass --metrics HOST:PORT (weftd's metrics_listen)\n", page.error().message.c_str());
    return;
  }
  const std::vector<MetricSample> samples = parse_metrics_text(*page);
  const MetricsSummary m = summarize_metrics(samples);
  if (!m.pid) {
    std::printf("\nmetrics  %s serves no weftd page (no weft_node_info)\n", address.c_str());
    return;
  }
  if (*m.pid != node_pid) {
    std::printf("\nmetrics  %s belongs to another weftd (pid %u; this node is pid %u): pass --metrics with this node's metrics_listen\n",
                address.c_str(), *m.pid, node_pid);
    return;
  }
  std::printf("\nmetrics  http://%s/metrics\n", address.c_str());
  if (!m.kafka) {
    std::printf("kafka    off (weftd runs without its Kafka listener)\n");
  } else {
    std::printf("kafka    %llu connections (%llu accepted, %llu refused), %s in, %s out, %llu records in\n",
                static_cast<unsigned long long>(m.connections), static_cast<unsigned long long>(m.accepted),
                static_cast<unsigned long long>(m.refused), human_bytes(m.bytes_in).c_str(), human_bytes(m.bytes_out).c_str(),
                static_cast<unsigned long long>(m.records_in));
    if (m.apis.empty()) {
      std::printf("         no Kafka requests yet\n");
    } else {
      std::printf("\n%-24s %12s %10s %10s %10s\n", "kafka api", "requests", "errors", "p50", "p99");
      for (const KafkaApiSummary& a : m.apis)
        std::printf("%-24s %12llu %10llu %10s %10s\n", printable(a.api).c_str(), static_cast<unsigned long long>(a.requests),
                    static_cast<unsigned long long>(a.errors), human_seconds(a.p50_seconds).c_str(), human_seconds(a.p99_seconds).c_str());
    }
  }
  if (m.groups.empty()) {
    std::printf("groups   none\n");
    return;
  }
  std::printf("\n%-32s %-20s %14s %10s\n", "group", "state", "lag", "partitions");
  for (const GroupSummary& g : m.groups)
    std::printf("%-32s %-20s %14llu %10u\n", printable(g.group).c_str(), g.state.empty() ? "-" : printable(g.state).c_str(),
                static_cast<unsigned long long>(g.lag), g.partitions);
}

}  // namespace weft::cli

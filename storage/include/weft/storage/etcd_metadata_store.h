// The cluster metadata store (fabric's MetadataStore port) kept in etcd, through the HTTP/JSON
// gateway of etcd's v3 API (etcd 3.4 or later; plain http, one endpoint).
//
// Each call is one HTTP request on a keep-alive connection (made again after any failure),
// bounded by `EtcdOptions::request_timeout_ms`: connecting, sending, and reading the whole answer.
// Errors: kUnavailable (etcd unreachable, no answer in time: retry the call), kNotFound (a lease
// that has ended), kOutOfRange (a watch from a compacted revision), kInvalidArgument (an empty
// key), kCorrupt (an answer that is not the JSON expected), else what etcd's gRPC code says.
// Every message starts with "etcd at <host:port>".
//
// A watch has its own connection (a chunked stream of JSON objects, one per line). It learns
// that etcd stopped from the connection closing, and of a host that vanished silently from TCP
// keep-alive probes (about 25 s); then next() gives kUnavailable and the caller opens a new
// watch from the revision after the last event it saw.
#pragma once

#include <memory>
#include <string_view>

#include "weft/fabric/metadata_store.h"
#include "weft/fabric/result.h"

namespace weft::storage {

struct EtcdOptions {
  // Bounds every call (a watch's next() waits as long as it is told instead).
  int request_timeout_ms = 2000;
};

// A store on the etcd at `endpoint`: "http://127.0.0.1:2379" or "127.0.0.1:2379". Connects on
// the first call, not here, so a store opened while etcd is down works once it is up: the
// result is an error only for an endpoint that cannot be used (kInvalidArgument, or
// kUnsupported for https). Thread-safe: calls from several threads take turns on the one
// connection; a watch is used by one thread at a time.
Result<std::unique_ptr<MetadataStore>> open_etcd_metadata_store(std::string_view endpoint, EtcdOptions options = {});

}  // namespace weft::storage

// SHA-256 (FIPS 180-4) and HMAC-SHA-256 (RFC 2104), for the replication links' proof that a
// peer knows the cluster's secret. Small messages, once per link: written for clarity, not speed.
#pragma once

#include <array>
#include <cstddef>
#include <span>

namespace weft {

using Sha256Digest = std::array<std::byte, 32>;

Sha256Digest sha256(std::span<const std::byte> message) noexcept;
Sha256Digest hmac_sha256(std::span<const std::byte> key, std::span<const std::byte> message) noexcept;
// Compares in time that does not depend on where they differ (a proof checked byte by byte
// would tell a guesser how many leading bytes it has right).
bool same_digest(const Sha256Digest& a, const Sha256Digest& b) noexcept;

}  // namespace weft

#!/usr/bin/env bash
# Installs what weft's build and tests need on Debian 12, only when something is missing, and
# reserves hugepages for the rings when running as root. Safe to run again.
set -euo pipefail

packages=(cmake ninja-build g++ ccache pkg-config libgtest-dev libbenchmark-dev libboost-dev libcli11-dev libtomlplusplus-dev libtbb-dev liburing-dev
          # codecs for batches Kafka clients compress (the C++ consumer and weft consume read them)
          zlib1g-dev libsnappy-dev liblz4-dev libzstd-dev
          # librdkafka: weft produce|consume|perf --bootstrap (the Kafka protocol)
          librdkafka-dev
          # Kafka clients, for the compatibility tests only (tests/kafka)
          kcat python3-confluent-kafka python3-kafka
          # etcd: the cluster metadata store (storage/, parsed with nlohmann/json) and the etcd its tests start
          nlohmann-json3-dev etcd-server etcd-client)
# Targets that need more name it here (make fuzz: clang and its libFuzzer runtime).
read -r -a extra <<< "${WEFT_EXTRA_PACKAGES:-}"
packages+=("${extra[@]}")
hugepages_wanted=${WEFT_HUGEPAGES:-64}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "weft: missing Debian packages: ${missing[*]}" >&2
    echo "weft: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "weft: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rings use 2 MiB pages when the kernel has them reserved and fall back to 4 KiB pages
# (and say so) when not. The pool is the whole machine's, so only grow it, never shrink it.
pool=/proc/sys/vm/nr_hugepages
if [ -w "$pool" ]; then
  have=$(cat "$pool")
  if [ "$have" -lt "$hugepages_wanted" ]; then
    echo "$hugepages_wanted" > "$pool" 2>/dev/null || true
    echo "weft: hugepages reserved: $(cat "$pool") (asked for $hugepages_wanted)"
  fi
else
  echo "weft: not root, hugepages left as they are ($(cat "$pool" 2>/dev/null || echo '?') reserved)"
fi

// Seams for tests of the node, not part of the library's interface.
#pragma once

#include <cstdint>
#include <string_view>

namespace weft::test_hooks {

// Called in each maintenance pass, for each partition, right after the pass first looks at the
// partition's consumers and before it drains the partition to its log (under the partition's
// log mutex: the hook may touch the ring's memory, not the node). For tests that must act in
// that window whatever the machine's timing; none unless set.
using PassHook = void (*)(std::string_view topic, std::uint32_t partition);
void set_after_consumer_scan_hook(PassHook hook) noexcept;
// Called in a pass over a flow-controlled partition right after its second look at the
// consumers, inside the window in which it moves the reuse limit (the same lock applies).
void set_after_second_consumer_look_hook(PassHook hook) noexcept;

}  // namespace weft::test_hooks

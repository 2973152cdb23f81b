// Seams for tests of the segment log, not part of the library's interface.
#pragma once

#include <span>
#include <string>

namespace weft::storage::test_hooks {

// Called before an fdatasync of `files` (descriptors) of the log in `dir`: 0 lets the sync go
// on, an errno fails it as the disk would have. For tests that must hold a sync at that moment,
// fail it, or see what it covers, whatever the machine's timing; none unless set.
using SyncHook = int (*)(const std::string& dir, std::span<const int> files);
// In the process's syncer thread, for a roll's sync of the segments it closed.
void set_closed_segment_sync_hook(SyncHook hook) noexcept;
// In the caller's thread, for each file that SegmentLog::sync() syncs (outside the log's lock).
void set_log_sync_hook(SyncHook hook) noexcept;
// In the syncer thread, for an epoch history saved with the log (`files` empty when a failed
// save left none), before the recovery point moves.
void set_epochs_sync_hook(SyncHook hook) noexcept;

}  // namespace weft::storage::test_hooks

//! What on disk says a cached model directory can be trusted: the completion marker written
//! once every file is present and verified, and the boot stamp of the pull that wrote the
//! files. A leaf of the cache, so hydration can read and write these without depending on
//! the cache's bookkeeping (capacity, pins, pulls in flight).

use std::path::Path;

/// Name of the marker written into a model directory once every file is present and verified.
/// Its modification time is the model's last use.
pub(crate) const COMPLETE_MARKER: &str = ".colo-manifest.json";

/// Holds the kernel's boot id of the pull that wrote the directory's files. Files are not
/// flushed to disk before they take their real names (a flush per file costs more than the
/// pull); within one boot the page cache is the truth, and a power cut changes the boot id, so
/// files from an earlier boot are re-verified chunk by chunk before they are trusted again.
pub(crate) const BOOT_STAMP: &str = ".colo-boot";

/// This boot's id (`/proc/sys/kernel/random/boot_id`); a constant where there is none.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "no-boot-id".into())
}

/// Whether the files in `dir` were written since the host last booted.
pub(crate) fn written_this_boot(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(BOOT_STAMP)).is_ok_and(|s| s.trim() == boot_id())
}

/// Whether the model directory `dir` is complete and was written in this boot.
pub(crate) fn complete(dir: &Path) -> bool {
    dir.join(COMPLETE_MARKER).is_file() && written_this_boot(dir)
}

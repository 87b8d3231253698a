//! Shared parts of the overlayer fuzz targets.
//!
//! * [`jail`]: where the library runs. A worker thread with a private mount
//!   namespace, a tmpfs as its root (chroot) and sentinel files outside the
//!   output directory: a write that leaves the output directory lands in the
//!   tmpfs (never on the host) and is caught by comparing the sentinels after
//!   every input.
//! * [`targets`]: the checks each target makes on one input.
//! * [`stack`]: the structured input of the `stack` target (small name
//!   alphabets, hostile names and link targets included), mapped to case
//!   entries.

pub mod jail;
pub mod stack;
pub mod targets;

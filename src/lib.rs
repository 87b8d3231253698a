//! overlayer: OCI layer tars ⇄ overlayfs-native layer directories, and the
//! userspace application of layers, exactly as the two authorities say:
//!
//! * the OCI image spec, layer.md:
//!   <https://github.com/opencontainers/image-spec/blob/main/layer.md>
//! * the kernel's overlayfs documentation:
//!   <https://docs.kernel.org/filesystems/overlayfs.html>
//!
//! [`apply`] flattens layers into a rootfs; [`to_overlay`] writes one
//! directory per layer for a `lowerdir=` mount; [`tree`] captures and compares
//! directory trees (a merged view as data); [`mount`] mounts converted layers
//! in a private mount namespace. The application rules live once, in
//! `rules`, and both `apply` and `to_overlay` run them.

pub mod apply;
pub mod error;
mod fast_hash;
mod gzip;
pub mod hidden;
pub mod image;
mod inflate;
pub mod layer;
pub mod limits;
pub mod lower;
pub mod mount;
pub mod output;
mod rules;
mod source;
pub mod spec;
pub mod sys;
mod tar_stream;
pub mod to_oci;
pub mod to_overlay;
pub mod tree;

pub use apply::{apply_into, apply_to_new_dir, apply_to_new_dir_with};
pub use error::{Error, ImageError, ImageRule, Result, Rule};
pub use limits::{Limits, Notice, ReadOptions, Summary};
pub use to_oci::{
    changes, export, export_to_file, Change, ExportOptions, ExportSummary, Redirects,
};
pub use to_overlay::{convert_into, convert_to_new_dir, ConvertOptions, Converted};

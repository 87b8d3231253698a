//! The strings and numbers of the two authorities, each documented once.
//!
//! * OCI image spec, `layer.md`, section "Whiteouts":
//!   <https://github.com/opencontainers/image-spec/blob/main/layer.md#whiteouts>
//! * Linux `Documentation/filesystems/overlayfs.rst`, sections "whiteouts and
//!   opaque directories" and "Nesting overlayfs mounts".

/// layer.md: "A whiteout file is an empty file with a special filename that
/// signifies a path should be deleted. A whiteout filename consists of the
/// prefix `.wh.` plus the basename of the path to be deleted."
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// layer.md: "In addition to expressing negative changes, a layer may also
/// have an opaque directory ... indicated by ... `.wh..wh..opq`", which hides
/// every lower child of its directory wherever it sits in the archive.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// AUFS metadata prefix (`.wh..wh.plnk`, `.wh..wh.orph`, ...). layer.md: such
/// names are reserved; they never appear in a rootfs.
pub const AUFS_META_PREFIX: &str = ".wh..wh.";

/// overlayfs.rst: "A whiteout is created as a character device with 0/0
/// device number". This is the device number we write and recognise.
pub const WHITEOUT_RDEV: (u32, u32) = (0, 0);

/// The PAX record prefix for extended attributes (`SCHILY.xattr.NAME`), as
/// star, GNU tar and every layer writer (Go's archive/tar) use it.
pub const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// xattr(7): "user extended attributes may be assigned to files and
/// directories"; the kernel refuses them (EPERM) on symlinks, fifos, sockets
/// and device nodes.
pub const USER_XATTR_PREFIX: &str = "user.";

/// xattr(7): the namespaces Linux has; a name in no other is refused by
/// every filesystem (EOPNOTSUPP).
pub const XATTR_NAMESPACES: [&str; 4] = ["security.", "system.", "trusted.", "user."];

/// `<linux/limits.h>`: the longest xattr name (ERANGE beyond it).
pub const XATTR_NAME_MAX: usize = 255;

/// `<linux/limits.h>`: the largest xattr value (E2BIG beyond it).
pub const XATTR_SIZE_MAX: usize = 65536;

/// overlayfs.rst: the privileged xattr namespace for overlay metadata.
pub const TRUSTED_OVERLAY: &str = "trusted.overlay.";
/// overlayfs.rst: with `-o userxattr` overlay uses the `user.` namespace.
pub const USER_OVERLAY: &str = "user.overlay.";

/// overlayfs.rst: "A directory is made opaque by setting the xattr
/// `trusted.overlay.opaque` to `y`". Suffix after the namespace prefix.
pub const OPAQUE_XATTR_SUFFIX: &str = "opaque";
/// Value of the opaque xattr for an opaque directory.
pub const OPAQUE_YES: &[u8] = b"y";
/// overlayfs.rst (6.7+): a directory that may hold xattr whiteouts carries
/// `overlay.opaque="x"`; it is not opaque.
pub const OPAQUE_XWHITEOUTS: &[u8] = b"x";
/// overlayfs.rst (6.7+): "an empty regular file with the xattr
/// `overlay.whiteout`" is a whiteout when its parent has `opaque="x"`.
pub const WHITEOUT_XATTR_SUFFIX: &str = "whiteout";
/// overlayfs.rst, "Redirect dir": a directory renamed in the merged view
/// (`redirect_dir=on`) carries `overlay.redirect`, the path of its lower
/// directory: absolute from the root when it starts with `/`, otherwise a
/// name in the parent's lower directory.
pub const REDIRECT_XATTR_SUFFIX: &str = "redirect";
/// overlayfs.rst, "Metadata only copy up": a file copied up for a metadata
/// change only (`metacopy=on`) carries `overlay.metacopy`; its data stays
/// in the lower file, found at the same path or at its `overlay.redirect`.
pub const METACOPY_XATTR_SUFFIX: &str = "metacopy";

/// overlayfs.rst, "Nesting overlayfs mounts": an overlay xattr stored on a
/// layer for a nested overlay is escaped by one more `overlay.`, so
/// `trusted.overlay.X` in a layer is stored as `trusted.overlay.overlay.X`
/// and the outer overlay shows it as `trusted.overlay.X`.
pub const ESCAPE_INFIX: &str = "overlay.";

/// The kernel caps a stack of lower layers at this many (OVL_MAX_STACK).
pub const MAX_LOWER_LAYERS: usize = 500;

/// What a layer name means under the OCI whiteout rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhiteoutName<'a> {
    /// Not a whiteout: an ordinary name.
    Plain,
    /// `.wh..wh..opq`: hide all lower children of the parent.
    Opaque,
    /// `.wh.NAME`: delete `NAME` from the lower layers.
    Whiteout(&'a str),
    /// `.wh..wh.*` other than the opaque marker: AUFS metadata.
    AufsMeta,
}

/// Classifies one path component by the layer.md whiteout rules.
///
/// A bare `.wh.`, `.wh..` and `.wh...` are rejected by the caller (they
/// would delete nothing, the parent, or a name no filesystem allows).
pub fn classify(name: &str) -> WhiteoutName<'_> {
    if name == OPAQUE_MARKER {
        WhiteoutName::Opaque
    } else if let Some(rest) = name.strip_prefix(AUFS_META_PREFIX) {
        // `.wh..wh.` + "" is a whiteout of a file literally named `.wh.`
        // (scenario 13), not metadata.
        if rest.is_empty() {
            WhiteoutName::Whiteout(WHITEOUT_PREFIX)
        } else {
            WhiteoutName::AufsMeta
        }
    } else if let Some(rest) = name.strip_prefix(WHITEOUT_PREFIX) {
        WhiteoutName::Whiteout(rest)
    } else {
        WhiteoutName::Plain
    }
}

/// The overlay xattr `overlay.SUFFIX` in the namespace the mount uses:
/// `user.` with `-o userxattr`, else `trusted.`.
pub fn overlay_xattr(userxattr: bool, suffix: &str) -> String {
    let ns = if userxattr {
        USER_OVERLAY
    } else {
        TRUSTED_OVERLAY
    };
    format!("{ns}{suffix}")
}

/// True for xattr names that overlayfs interprets itself; a layer must never
/// set them live (scenario 38).
pub fn is_overlay_private_xattr(name: &str) -> bool {
    name.starts_with(TRUSTED_OVERLAY) || name.starts_with(USER_OVERLAY)
}

/// Escapes an overlay-private xattr for storage in a layer directory, by the
/// kernel's nesting convention: `trusted.overlay.X` → `trusted.overlay.overlay.X`.
pub fn escape_overlay_xattr(name: &str) -> String {
    for ns in [TRUSTED_OVERLAY, USER_OVERLAY] {
        if let Some(rest) = name.strip_prefix(ns) {
            return format!("{ns}{ESCAPE_INFIX}{rest}");
        }
    }
    name.to_string()
}

/// Why Linux cannot store the xattr `name` = `value` on any filesystem, if
/// so (xattr(7) and the VFS's checks in setxattr(2)).
pub fn unstorable_xattr(name: &str, value: &[u8]) -> Option<&'static str> {
    let Some(prefix) = XATTR_NAMESPACES.iter().find(|p| name.starts_with(**p)) else {
        return Some("not in the security, system, trusted or user namespace");
    };
    if name.len() == prefix.len() {
        Some("no name after the namespace")
    } else if name.len() > XATTR_NAME_MAX {
        Some("name longer than 255 bytes")
    } else if name.contains('\0') {
        Some("NUL byte in the name")
    } else if value.len() > XATTR_SIZE_MAX {
        Some("value larger than 64 KiB")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_marker_is_not_a_whiteout_of_a_name() {
        assert_eq!(classify(".wh..wh..opq"), WhiteoutName::Opaque);
    }

    #[test]
    fn look_alike_opaque_is_aufs_metadata_not_opaque() {
        assert_eq!(classify(".wh..wh..opqX"), WhiteoutName::AufsMeta);
        assert_eq!(classify(".wh..wh.plnk"), WhiteoutName::AufsMeta);
    }

    #[test]
    fn double_prefix_whites_out_a_file_named_wh() {
        assert_eq!(classify(".wh..wh."), WhiteoutName::Whiteout(".wh."));
    }

    #[test]
    fn hidden_names_are_whited_out_by_prefix() {
        assert_eq!(classify(".wh..baz"), WhiteoutName::Whiteout(".baz"));
        assert_eq!(classify(".whx"), WhiteoutName::Plain);
    }

    #[test]
    fn overlay_xattrs_escape_by_nesting() {
        assert_eq!(
            escape_overlay_xattr("trusted.overlay.opaque"),
            "trusted.overlay.overlay.opaque"
        );
        assert_eq!(
            escape_overlay_xattr("user.overlay.redirect"),
            "user.overlay.overlay.redirect"
        );
        assert_eq!(escape_overlay_xattr("user.a"), "user.a");
        assert!(is_overlay_private_xattr("trusted.overlay.origin"));
        assert!(!is_overlay_private_xattr("trusted.overlayx"));
    }

    #[test]
    fn xattrs_linux_cannot_store_are_named() {
        assert_eq!(unstorable_xattr("user.x", b"1"), None);
        assert_eq!(unstorable_xattr("security.capability", b""), None);
        assert!(unstorable_xattr("foo.x", b"1").is_some());
        assert!(unstorable_xattr("user.", b"1").is_some());
        assert!(unstorable_xattr(&format!("user.{}", "n".repeat(251)), b"").is_some());
        assert_eq!(
            unstorable_xattr(&format!("user.{}", "n".repeat(250)), b""),
            None
        );
        assert!(unstorable_xattr("user.x", &vec![0; XATTR_SIZE_MAX + 1]).is_some());
        assert_eq!(unstorable_xattr("user.x", &vec![0; XATTR_SIZE_MAX]), None);
    }
}

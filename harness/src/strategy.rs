//! Proptest strategies for layer stacks. Tiny name alphabets make names
//! collide across layers and kinds, where the bugs are.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::case::{EntryType, TarEntry};

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from)
}

fn components(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(name(), 1..=max)
}

/// A name as a tar writer might spell it: `a/b`, `./a/b` or `/a/b`.
fn spelled(parts: Vec<String>, style: u8, trailing: bool) -> String {
    let mut s = match style {
        0 => format!("./{}", parts.join("/")),
        1 => format!("/{}", parts.join("/")),
        _ => parts.join("/"),
    };
    if trailing {
        s.push('/');
    }
    s
}

/// The xattr namespace generated stacks use: `user.*` where the scratch
/// filesystem takes it, else `trusted.*` (tmpfs before 6.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNamespace {
    User,
    Trusted,
}

impl XattrNamespace {
    fn prefix(self) -> &'static str {
        match self {
            XattrNamespace::User => "user.",
            XattrNamespace::Trusted => "trusted.",
        }
    }
}

fn attrs(ns: XattrNamespace) -> impl Strategy<Value = (u32, u32, i64, BTreeMap<String, String>)> {
    let (x, y) = (format!("{}x", ns.prefix()), format!("{}y", ns.prefix()));
    (
        prop_oneof![4 => Just(0u32), 1 => Just(1000u32)],
        prop_oneof![4 => Just(0u32), 1 => Just(1000u32)],
        prop_oneof![Just(0i64), Just(1_000_000i64)],
        prop_oneof![
            48 => Just(BTreeMap::new()),
            16 => Just(BTreeMap::from([(x.clone(), "1".to_string())])),
            16 => Just(BTreeMap::from([(y.clone(), "2".to_string())])),
            // Binary, with newlines: PAX records must be split by length.
            16 => Just(BTreeMap::from([(y.clone(), "hex:0a000a".to_string())])),
            // What no Linux filesystem stores (xattr(7)), next to one it does:
            // a namespace of its own, no name, too long a name, too large a value.
            6 => prop_oneof![
                Just("os2.x".to_string()),
                Just("user.".to_string()),
                Just(format!("user.{}", "n".repeat(251))),
            ]
            .prop_map(move |bad| BTreeMap::from([(bad, "1".to_string()), (y.clone(), "2".to_string())])),
            // One in a hundred: 64 KiB of PAX is slow to build under TCG.
            1 => Just(BTreeMap::from([(x, "v".repeat(65537))])),
        ],
    )
}

/// One tar entry of any kind.
pub fn entry(depth: usize, ns: XattrNamespace) -> impl Strategy<Value = TarEntry> {
    let style = 0u8..3;
    let plain = (
        components(depth),
        style.clone(),
        prop_oneof![
            4 => Just(EntryType::File),
            4 => Just(EntryType::Dir),
            2 => Just(EntryType::Symlink),
            3 => Just(EntryType::Hardlink),
            1 => Just(EntryType::Fifo),
            1 => Just(EntryType::Char),
        ],
        prop_oneof![Just(""), Just("1"), Just("22")],
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("a/b"),
            Just("/c"),
            Just("../a"),
            Just("."),
            Just("/")
        ],
        components(depth),
        prop_oneof![
            Just(None),
            Just(Some("0700")),
            Just(Some("0750")),
            Just(Some("4755"))
        ],
        attrs(ns),
    )
        .prop_map(
            |(parts, style, kind, text, symtarget, linkparts, mode, (uid, gid, mtime, xattrs))| {
                let path = spelled(parts, style, kind == EntryType::Dir && style == 2);
                let target = match kind {
                    EntryType::Symlink => Some(symtarget.to_string()),
                    // Aimed at an earlier name by `aim_hardlinks`.
                    EntryType::Hardlink => Some(format!("{PICK}{}", linkparts.join("/"))),
                    _ => None,
                };
                // On symlinks and special files, user.* xattrs are dropped
                // (Linux keeps them on files and directories only) and
                // trusted.* ones kept; hardlinks' own headers are ignored.
                TarEntry {
                    path,
                    kind,
                    text: if kind == EntryType::File {
                        text.to_string()
                    } else {
                        String::new()
                    },
                    target,
                    mode: mode
                        .filter(|_| kind != EntryType::Symlink)
                        .map(String::from),
                    uid,
                    gid,
                    mtime,
                    rdev: (kind == EntryType::Char).then_some([1, 3]),
                    xattrs,
                }
            },
        );
    let marker = (
        prop::collection::vec(name(), 0..depth),
        prop_oneof![
            name().prop_map(|n| format!(".wh.{n}")),
            Just(".wh..wh..opq".to_string())
        ],
        style,
    )
        .prop_map(|(mut parts, last, style)| {
            parts.push(last);
            TarEntry {
                path: spelled(parts, style, false),
                ..Default::default()
            }
        });
    let root = prop_oneof![Just("0755"), Just("0700")].prop_map(|m| TarEntry {
        path: "./".into(),
        kind: EntryType::Dir,
        mode: Some(m.into()),
        ..Default::default()
    });
    prop_oneof![8 => plain, 3 => marker, 1 => root]
}

/// Marks a hardlink target still to be aimed.
const PICK: &str = "\u{0}pick:";

/// A stack of 1..=`max_layers` layers of up to 6 entries each.
pub fn stack(max_layers: usize, ns: XattrNamespace) -> impl Strategy<Value = Vec<Vec<TarEntry>>> {
    (
        prop::collection::vec(
            prop::collection::vec(entry(4, ns), 0..7),
            1..=max_layers.max(1),
        ),
        prop::collection::vec(any::<u8>(), 64),
    )
        .prop_map(|(mut stack, picks)| {
            aim_hardlinks(&mut stack, &picks);
            stack
        })
}

/// Points most hardlinks at a name that exists when the link is read (a
/// random name is nearly always missing); one in eight keeps its random
/// name. Three in four of the aimed ones pick a non-directory of the merged
/// view below the link's layer (as the model computes it) where there is one:
/// cross-layer groups (a link to a lower file, chains of links over several
/// layers, links to names a later layer renames or deletes) are where
/// convert has to copy a group up. The rest pick a file or link written
/// earlier in the stack.
fn aim_hardlinks(stack: &mut [Vec<TarEntry>], picks: &[u8]) {
    let mut earlier: Vec<String> = Vec::new();
    let mut n = 0;
    for layer in 0..stack.len() {
        let lower: Vec<String> = if layer == 0 {
            Vec::new()
        } else {
            crate::model::run(&stack[..layer])
                .map(|view| {
                    view.nodes
                        .into_iter()
                        .filter(|(_, node)| node.kind != overlayer::tree::Type::Dir)
                        .map(|(path, _)| path)
                        .collect()
                })
                .unwrap_or_default()
        };
        for entry in &mut stack[layer] {
            if let Some(random) = entry.target.as_ref().and_then(|t| t.strip_prefix(PICK)) {
                let pick = picks[n % picks.len()] as usize;
                n += 1;
                if pick.is_multiple_of(8) {
                    entry.target = Some(random.to_string());
                } else if !lower.is_empty() && (pick % 4 != 1 || earlier.is_empty()) {
                    entry.target = Some(lower[pick / 4 % lower.len()].clone());
                } else if !earlier.is_empty() {
                    entry.target = Some(earlier[pick % earlier.len()].clone());
                } else {
                    // Nothing to aim at yet: a plain file instead.
                    entry.kind = EntryType::File;
                    entry.target = None;
                }
            }
            if matches!(entry.kind, EntryType::File | EntryType::Hardlink)
                && !entry.path.contains(".wh.")
            {
                earlier.push(plain_name(&entry.path));
            }
        }
    }
}

fn plain_name(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// True if a hardlink in some layer names a file or link written by a lower
/// layer (by name, before symlinks: what the generator aimed at).
pub fn has_cross_layer_link(stack: &[Vec<TarEntry>]) -> bool {
    let mut below: std::collections::HashSet<String> = Default::default();
    for layer in stack {
        let mut here = Vec::new();
        for entry in layer {
            if entry.kind == EntryType::Hardlink
                && entry
                    .target
                    .as_deref()
                    .is_some_and(|t| below.contains(&plain_name(t)))
            {
                return true;
            }
            if matches!(entry.kind, EntryType::File | EntryType::Hardlink) {
                here.push(plain_name(&entry.path));
            }
        }
        below.extend(here);
    }
    false
}

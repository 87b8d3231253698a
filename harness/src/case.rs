//! The case file format (documented in `cases/README.md`): a `why`, layers as
//! ordered tar entries, and the expected outcome. Generated cases use it too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use overlayer::tree::View;
use overlayer::{ConvertOptions, ReadOptions};
use serde::{Deserialize, Serialize};

use crate::kernel::Scratch;

/// One regression case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// One or two sentences: the behaviour, and the source of the rule or bug.
    pub why: String,
    /// Kernel features the case needs (`userxattr`, `xwhiteouts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Layers, bottom first; each a list of tar entries in archive order.
    pub layers: Vec<Vec<TarEntry>>,
    /// Byte-level changes to the built layers, in order (compression,
    /// corruption), for cases about damaged archives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transform: Vec<Transform>,
    /// Reading options the case runs with (strict mode, limits).
    #[serde(default, skip_serializing_if = "CaseOptions::is_default")]
    pub options: CaseOptions,
    /// An upper-dir case: writes on a writable overlay over the layers, then
    /// `export` of the upper. `expect` is then the merged view after the
    /// writes, which the layers plus the export must also apply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportCase>,
    pub expect: Expect,
    /// Other outcomes the spec allows, for `overlayer check` of third-party
    /// unpackers: `"refusal"` accepts an unpacker that refuses the image
    /// where overlayer gives a contained result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept: Vec<String>,
}

/// The upper-dir part of a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportCase {
    /// Mount with `redirect_dir=on,metacopy=on`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect: bool,
    /// Markings to run in (`trusted`, `userxattr`, `xwhiteouts`); those the
    /// kernel lacks are skipped. Default: trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marks: Vec<Mode>,
    /// Syscalls on the merged view, in order (`rename d1 d2`; see
    /// `WriteOp::from_str`). Failing ones are part of the case.
    pub writes: Vec<String>,
    /// The exported layer's entry names, in order.
    pub entries: Vec<String>,
    /// `overlayer changes` of the upper, as `KIND /path` lines.
    pub changes: Vec<String>,
}

impl ExportCase {
    pub fn ops(&self) -> Result<Vec<crate::write::WriteOp>> {
        self.writes
            .iter()
            .map(|w| w.parse().map_err(anyhow::Error::msg))
            .collect()
    }

    pub fn marks(&self) -> Vec<Mode> {
        if self.marks.is_empty() {
            vec![Mode::Trusted]
        } else {
            self.marks.clone()
        }
    }
}

/// How converted layers are marked for the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `trusted.overlay.*` markers, char device whiteouts.
    Trusted,
    /// `user.overlay.*` markers, mounted with `-o userxattr`.
    Userxattr,
    /// Xattr whiteouts (Linux 6.7+) instead of char devices.
    Xwhiteouts,
}

impl Mode {
    pub fn convert_options(self, read: ReadOptions) -> ConvertOptions {
        ConvertOptions {
            userxattr: self == Mode::Userxattr,
            xwhiteouts: self == Mode::Xwhiteouts,
            read,
        }
    }

    /// Why this kernel and scratch filesystem cannot run the mode, if so.
    pub fn unavailable(self, scratch: &Scratch) -> Option<&'static str> {
        let features = crate::kernel::probe_cached();
        match self {
            Mode::Trusted => None,
            _ if !scratch.user_xattrs() => Some(crate::kernel::NO_USER_XATTRS),
            Mode::Userxattr if !features.userxattr => Some("no -o userxattr"),
            Mode::Xwhiteouts if !features.xwhiteouts => Some("no xattr whiteouts (Linux 6.7+)"),
            _ => None,
        }
    }
}

/// A byte-level change to one built layer. (`deny_unknown_fields` does not
/// work with `flatten`; the tagged `op` enum rejects unknown operations.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transform {
    pub layer: usize,
    #[serde(flatten)]
    pub op: TransformOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum TransformOp {
    /// Compress with gzip.
    Gzip,
    /// Compress with zstd, with the frame's content checksum (as the `zstd`
    /// command writes it).
    Zstd,
    /// Keep only the first `at` bytes.
    Truncate { at: usize },
    /// XOR the byte at `at` with 0xff; a negative `at` counts from the end
    /// (-1 is the last byte: a gzip trailer's CRC-32 starts at -8).
    FlipByte { at: i64 },
    /// Append `text` (garbage after a compressed stream).
    Append { text: String },
}

/// Options a case runs with; each maps to a command-line flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseOptions {
    /// `--strict`: refuse what the spec forbids or tools disagree on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_extension_bytes: Option<u64>,
}

impl CaseOptions {
    fn is_default(&self) -> bool {
        *self == CaseOptions::default()
    }
}

impl Case {
    /// The layer bytes the case describes: tars, then the transforms.
    pub fn layer_bytes(&self) -> Result<Vec<Vec<u8>>> {
        let mut layers = self
            .layers
            .iter()
            .map(|l| build_tar(l))
            .collect::<Result<Vec<_>>>()?;
        for t in &self.transform {
            let Some(bytes) = layers.get_mut(t.layer) else {
                bail!("transform names layer {}, which does not exist", t.layer);
            };
            apply_transform(bytes, &t.op)?;
        }
        Ok(layers)
    }
}

/// Changes a built layer's bytes as `op` says.
pub fn apply_transform(bytes: &mut Vec<u8>, op: &TransformOp) -> Result<()> {
    use std::io::Write;
    match op {
        TransformOp::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(bytes)?;
            *bytes = enc.finish()?;
        }
        TransformOp::Zstd => {
            let mut enc = zstd::Encoder::new(Vec::new(), 3)?;
            enc.include_checksum(true)?;
            enc.write_all(bytes)?;
            *bytes = enc.finish()?;
        }
        TransformOp::Truncate { at } => bytes.truncate(*at),
        TransformOp::FlipByte { at } => {
            let len = bytes.len();
            let index = if *at < 0 {
                len.checked_sub(at.unsigned_abs() as usize)
            } else {
                Some(*at as usize)
            };
            match index.and_then(|i| bytes.get_mut(i)) {
                Some(b) => *b ^= 0xff,
                None => bail!("flip-byte at {at}: the layer has {len} bytes"),
            }
        }
        TransformOp::Append { text } => bytes.extend_from_slice(text.as_bytes()),
    }
    Ok(())
}

/// The expected outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Expect {
    /// The merged view (recorded from the kernel, reviewed by hand).
    View(View),
    /// A refusal: the layer, entry and rule code the error must name.
    Error(ExpectedError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedError {
    pub layer: usize,
    pub entry: String,
    pub rule: String,
}

/// A tar entry as written in a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TarEntry {
    /// The name exactly as stored in the archive (may be hostile: `../x`).
    pub path: String,
    #[serde(rename = "type", default, skip_serializing_if = "EntryType::is_file")]
    pub kind: EntryType,
    /// Content of a regular file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// Symlink target or hardlink target name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Permission bits, octal text; default 0644 (files), 0755 (dirs), 0777 (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub mtime: i64,
    /// Device numbers of char and block devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<[u32; 2]>,
    /// PAX `SCHILY.xattr.*` records.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    #[default]
    File,
    Dir,
    Symlink,
    Hardlink,
    Fifo,
    Char,
    Block,
}

impl EntryType {
    fn is_file(&self) -> bool {
        *self == EntryType::File
    }
}

impl TarEntry {
    /// A regular file holding `text`, with the defaults of a case entry.
    pub fn file(path: &str, text: &str) -> TarEntry {
        TarEntry {
            path: path.into(),
            text: text.into(),
            ..Default::default()
        }
    }

    /// A directory, with the defaults of a case entry.
    pub fn dir(path: &str) -> TarEntry {
        TarEntry {
            path: path.into(),
            kind: EntryType::Dir,
            ..Default::default()
        }
    }

    pub fn mode_bits(&self) -> u32 {
        match &self.mode {
            Some(m) => u32::from_str_radix(m, 8).unwrap_or(0o644),
            None => match self.kind {
                EntryType::Dir => 0o755,
                EntryType::Symlink | EntryType::Hardlink => 0o777,
                _ => 0o644,
            },
        }
    }
}

/// Builds the tar bytes of one layer. Names are written raw (a PAX `path`
/// record when longer than the header field), so hostile names survive.
pub fn build_tar(entries: &[TarEntry]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = tar::Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let kind = match e.kind {
            EntryType::File => tar::EntryType::Regular,
            EntryType::Dir => tar::EntryType::Directory,
            EntryType::Symlink => tar::EntryType::Symlink,
            EntryType::Hardlink => tar::EntryType::Link,
            EntryType::Fifo => tar::EntryType::Fifo,
            EntryType::Char => tar::EntryType::Char,
            EntryType::Block => tar::EntryType::Block,
        };
        header.set_entry_type(kind);
        header.set_mode(e.mode_bits());
        header.set_uid(e.uid as u64);
        header.set_gid(e.gid as u64);
        header.set_mtime(e.mtime.max(0) as u64);
        let data: &[u8] = if e.kind == EntryType::File {
            e.text.as_bytes()
        } else {
            b""
        };
        header.set_size(data.len() as u64);
        if let Some([major, minor]) = e.rdev {
            header.set_device_major(major)?;
            header.set_device_minor(minor)?;
        }
        overlayer::to_oci::set_name(
            &mut header.as_old_mut().name,
            "path",
            e.path.as_bytes(),
            &mut pax,
        );
        if let Some(target) = &e.target {
            if !matches!(e.kind, EntryType::Symlink | EntryType::Hardlink) {
                bail!("{}: only symlinks and hardlinks have a target", e.path);
            }
            overlayer::to_oci::set_name(
                &mut header.as_old_mut().linkname,
                "linkpath",
                target.as_bytes(),
                &mut pax,
            );
        } else if matches!(e.kind, EntryType::Symlink | EntryType::Hardlink) {
            bail!("{}: a link needs a target", e.path);
        }
        for (name, value) in &e.xattrs {
            pax.push((format!("SCHILY.xattr.{name}"), xattr_bytes(value)?));
        }
        if !pax.is_empty() {
            builder.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        header.set_cksum();
        builder.append(&header, data)?;
    }
    Ok(builder.into_inner()?)
}

/// Decodes a case xattr value: text, or `hex:…` for bytes.
pub fn xattr_bytes(value: &str) -> Result<Vec<u8>> {
    match value.strip_prefix("hex:") {
        Some(h) => hex::decode(h).context("xattr hex value"),
        None => Ok(value.as_bytes().to_vec()),
    }
}

/// A case read from disk, with its name (file stem).
#[derive(Debug, Clone)]
pub struct CaseFile {
    pub name: String,
    pub path: PathBuf,
    pub case: Case,
}

/// Reads one case file.
pub fn load(path: &Path) -> Result<CaseFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let case: Case =
        serde_json::from_str(&text).with_context(|| format!("parse case {}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(CaseFile {
        name,
        path: path.to_path_buf(),
        case,
    })
}

/// Every `*.json` case under the given files and directories (recursively),
/// sorted by path.
pub fn discover(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for root in roots {
        if root.is_dir() {
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                for item in
                    std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))?
                {
                    let path = item?.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|e| e == "json") {
                        out.push(path);
                    }
                }
            }
        } else {
            out.push(root.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// Serialises a case so it reads well in a diff: one tar entry per line, one
/// view node per line.
pub fn to_pretty_json(case: &Case) -> Result<String> {
    let line = |v: &serde_json::Value| serde_json::to_string(v).expect("json");
    let mut out = String::from("{\n");
    out.push_str(&format!("  \"why\": {},\n", line(&case.why.clone().into())));
    if !case.requires.is_empty() {
        out.push_str(&format!(
            "  \"requires\": {},\n",
            serde_json::to_string(&case.requires)?
        ));
    }
    if !case.options.is_default() {
        out.push_str(&format!(
            "  \"options\": {},\n",
            serde_json::to_string(&case.options)?
        ));
    }
    out.push_str("  \"layers\": [\n");
    for (i, layer) in case.layers.iter().enumerate() {
        out.push_str("    [\n");
        for (j, entry) in layer.iter().enumerate() {
            let comma = if j + 1 < layer.len() { "," } else { "" };
            out.push_str(&format!("      {}{comma}\n", serde_json::to_string(entry)?));
        }
        let comma = if i + 1 < case.layers.len() { "," } else { "" };
        out.push_str(&format!("    ]{comma}\n"));
    }
    out.push_str("  ],\n");
    if !case.transform.is_empty() {
        let ts: Vec<String> = case
            .transform
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        out.push_str(&format!("  \"transform\": [{}],\n", ts.join(", ")));
    }
    if !case.accept.is_empty() {
        out.push_str(&format!(
            "  \"accept\": {},\n",
            serde_json::to_string(&case.accept)?
        ));
    }
    if let Some(ex) = &case.export {
        out.push_str("  \"export\": {\n");
        if ex.redirect {
            out.push_str("    \"redirect\": true,\n");
        }
        if !ex.marks.is_empty() {
            let marks = serde_json::to_string(&ex.marks)?;
            out.push_str(&format!("    \"marks\": {marks},\n"));
        }
        for (key, list, last) in [
            ("writes", &ex.writes, false),
            ("entries", &ex.entries, false),
            ("changes", &ex.changes, true),
        ] {
            let comma = if last { "" } else { "," };
            let list = serde_json::to_string(list)?;
            out.push_str(&format!("    \"{key}\": {list}{comma}\n"));
        }
        out.push_str("  },\n");
    }
    match &case.expect {
        Expect::Error(e) => {
            out.push_str(&format!(
                "  \"expect\": {{\"error\": {}}}\n",
                serde_json::to_string(e)?
            ));
        }
        Expect::View(view) => {
            out.push_str("  \"expect\": {\"view\": {\n    \"nodes\": {\n");
            let n = view.nodes.len();
            for (i, (path, node)) in view.nodes.iter().enumerate() {
                let comma = if i + 1 < n { "," } else { "" };
                out.push_str(&format!(
                    "      {}: {}{comma}\n",
                    serde_json::to_string(path)?,
                    serde_json::to_string(node)?
                ));
            }
            out.push_str("    }");
            if !view.defects.is_empty() {
                out.push_str(&format!(
                    ",\n    \"defects\": {}",
                    serde_json::to_string(&view.defects)?
                ));
            }
            out.push_str("\n  }}\n");
        }
    }
    out.push_str("}\n");
    // Every field must survive: a field this writer forgot would be lost
    // from the case file on the next --record.
    let back: Case = serde_json::from_str(&out).context("re-read the written case")?;
    anyhow::ensure!(
        serde_json::to_value(&back)? == serde_json::to_value(case)?,
        "the case writer lost a field"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_json_round_trips() {
        let case = Case {
            why: "w".into(),
            requires: vec![],
            transform: vec![Transform {
                layer: 0,
                op: TransformOp::Truncate { at: 5 },
            }],
            options: CaseOptions {
                strict: true,
                ..Default::default()
            },
            accept: vec![],
            export: Some(ExportCase {
                redirect: true,
                marks: vec![Mode::Userxattr],
                writes: vec!["rename a b".into()],
                entries: vec!["./".into()],
                changes: vec!["D /a".into()],
            }),
            layers: vec![vec![TarEntry {
                path: "a".into(),
                text: "x".into(),
                ..Default::default()
            }]],
            expect: Expect::Error(ExpectedError {
                layer: 0,
                entry: "a".into(),
                rule: "r".into(),
            }),
        };
        let text = to_pretty_json(&case).unwrap();
        let back: Case = serde_json::from_str(&text).unwrap();
        assert_eq!(back.layers, case.layers);
        assert_eq!(back.transform, case.transform);
        assert_eq!(back.options, case.options);
    }

    #[test]
    fn hostile_names_are_written_raw() {
        let tar = build_tar(&[TarEntry {
            path: "../victim/x".into(),
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(&tar[..11], b"../victim/x");
    }
}

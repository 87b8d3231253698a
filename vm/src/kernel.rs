//! Kernel assets: resolving a Debian kernel with a private apt
//! configuration (`crate::apt`; the host's sources are never changed), downloading and
//! unpacking it into the cache (never installing it), reading a bzImage's
//! version, and collecting the overlay module with its dependencies.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::apt::PrivateApt;
use crate::progress;
use crate::spec::{self, KernelSpec};

/// Everything needed to boot one kernel.
#[derive(Debug, Clone)]
pub struct KernelAssets {
    /// What the user asked for (`6.1`, a package, a path).
    pub label: String,
    /// Kernel release (`uname -r`) if known before booting.
    pub release: Option<String>,
    /// The Debian package it came from, if any.
    pub package: Option<String>,
    pub bzimage: PathBuf,
    /// `/lib/modules/RELEASE`-like directory, if any.
    pub modules_dir: Option<PathBuf>,
}

/// Resolve, fetch and unpack as needed.
pub fn prepare(spec: &KernelSpec, cache: &Path, fetcher: &mut Fetcher) -> Result<KernelAssets> {
    match spec {
        KernelSpec::Series(series) => {
            let pkg = fetcher.resolve_series(series)?;
            progress!("kernel {series}: newest package is {pkg}");
            prepare_package(&spec.label(), &pkg, cache, fetcher)
        }
        KernelSpec::Package(pkg) => prepare_package(pkg, pkg, cache, fetcher),
        KernelSpec::Path { kernel, modules } => {
            if !kernel.is_file() {
                bail!("bzImage {} does not exist", kernel.display());
            }
            let image =
                fs::read(kernel).with_context(|| format!("reading {}", kernel.display()))?;
            let release = bzimage_version(&image)
                .map(|v| v.split_whitespace().next().unwrap_or_default().to_string());
            let modules_dir = match modules {
                Some(m) => Some(find_modules_root(m, release.as_deref())?),
                None => None,
            };
            Ok(KernelAssets {
                label: spec.label(),
                release,
                package: None,
                bzimage: kernel.clone(),
                modules_dir,
            })
        }
    }
}

/// Accept either `/lib/modules/VER` itself or a tree containing
/// `lib/modules/VER` (an unpacked package, a `make modules_install` prefix).
fn find_modules_root(dir: &Path, release: Option<&str>) -> Result<PathBuf> {
    if dir.join("kernel").is_dir() || dir.join("modules.dep").is_file() {
        return Ok(dir.to_path_buf());
    }
    for base in [
        dir.join("lib/modules"),
        dir.join("usr/lib/modules"),
        dir.to_path_buf(),
    ] {
        if let Some(rel) = release {
            if base.join(rel).join("kernel").is_dir() {
                return Ok(base.join(rel));
            }
        }
        if let Ok(entries) = fs::read_dir(&base) {
            let mut dirs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("kernel").is_dir())
                .collect();
            dirs.sort();
            if dirs.len() == 1 {
                return Ok(dirs.remove(0));
            }
        }
    }
    bail!(
        "{} is not a modules directory (no kernel/ or modules.dep, and no single lib/modules/VERSION below it)",
        dir.display()
    )
}

/// A kernel series the private apt lists do not hold, even after a refresh:
/// the mirror no longer serves it (or never did). The vm row says so, with
/// the command that showed it, and the run does not fail for it.
#[derive(Debug)]
pub struct NotServed {
    pub series: String,
    /// The command that listed no package.
    pub command: String,
    /// apt's warnings from the refresh, if any.
    pub warnings: String,
}

impl std::fmt::Display for NotServed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kernel series {} is not served: `{}` lists no linux-image-{}.*-amd64 after a refresh",
            self.series, self.command, self.series
        )?;
        if !self.warnings.is_empty() {
            write!(f, " (apt: {})", self.warnings.replace('\n', " | "))?;
        }
        Ok(())
    }
}

impl std::error::Error for NotServed {}

/// Finds and fetches Debian kernels through the private apt configuration,
/// refreshing its lists at most once per run.
pub struct Fetcher {
    apt: PrivateApt,
    refreshed: Option<String>,
}

impl Fetcher {
    pub fn new(cache: &Path) -> Result<Fetcher> {
        Ok(Fetcher {
            apt: PrivateApt::new(cache)?,
            refreshed: None,
        })
    }

    /// Refresh the lists unless that already happened in this run.
    fn refresh(&mut self, why: &str) -> Result<&str> {
        if self.refreshed.is_none() {
            progress!(
                "apt ({}): {why}; apt-get update of {} into {}",
                self.apt.codename(),
                self.apt.suites().join(", "),
                "vm/cache/apt"
            );
            let warnings = self.apt.update()?;
            if !warnings.is_empty() {
                progress!("apt: {}", warnings.replace('\n', " | "));
            }
            self.refreshed = Some(warnings);
        }
        Ok(self.refreshed.as_deref().unwrap_or(""))
    }

    fn resolve_series(&mut self, series: &str) -> Result<String> {
        let prefix = format!("linux-image-{series}");
        if !self.apt.fresh() {
            self.refresh("lists missing or older than a day")?;
        }
        let find = |apt: &PrivateApt| -> Result<Option<String>> {
            let names = apt.pkgnames(&prefix)?;
            Ok(spec::pick_newest(series, names.iter().map(String::as_str)))
        };
        if let Some(p) = find(&self.apt)? {
            return Ok(p);
        }
        let warnings = self
            .refresh(&format!("no {prefix}.*-amd64 in the lists"))?
            .to_string();
        find(&self.apt)?.ok_or_else(|| {
            NotServed {
                series: series.to_string(),
                command: self.apt.shown("apt-cache", &["pkgnames", &prefix]),
                warnings,
            }
            .into()
        })
    }
}

/// Download `pkg` (unless already unpacked) into `cache/kernels/pkg`, with
/// the packages it is split into: from 7.x, Debian's `linux-image-VER` holds
/// no kernel and depends on `linux-binary-VER` (the vmlinuz, under
/// `usr/lib/modules/VER/`) and `linux-modules-VER`.
fn prepare_package(
    label: &str,
    pkg: &str,
    cache: &Path,
    fetcher: &mut Fetcher,
) -> Result<KernelAssets> {
    let dest = cache.join("kernels").join(pkg);
    let marker = dest.join(".complete");
    let cached = marker.is_file().then(|| find_kernel(&dest)).flatten();
    if cached.is_some() {
        progress!("kernel {label}: using cached {}", dest.display());
    } else {
        let debs = cache.join("debs");
        fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
        let mut parts = vec![pkg.to_string()];
        parts.extend(fetcher.apt.split_parts(pkg)?);
        let tmp = cache.join("kernels").join(format!(".{pkg}.partial"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        let mut fetched = Vec::new();
        for part in &parts {
            let deb = match find_deb(&debs, part)? {
                Some(d) => d,
                None => {
                    progress!("kernel {label}: apt-get download {part}");
                    if let Err(e) = fetcher.apt.download(part, &debs) {
                        progress!("kernel {label}: {e:#}; retrying after apt-get update");
                        fetcher.refreshed = None;
                        fetcher.refresh("download failed")?;
                        fetcher.apt.download(part, &debs)?;
                    }
                    find_deb(&debs, part)?.ok_or_else(|| {
                        anyhow!("apt-get download {part} left no .deb in {}", debs.display())
                    })?
                }
            };
            progress!("kernel {label}: unpacking {}", deb.display());
            let out = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&tmp)
                .output()
                .context("running dpkg-deb")?;
            if !out.status.success() {
                bail!(
                    "dpkg-deb -x {} failed: {}",
                    deb.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            fetched.push(deb);
        }
        if find_kernel(&tmp).is_none() {
            bail!(
                "{pkg}: no boot/vmlinuz-* or usr/lib/modules/*/vmlinuz in {}",
                parts.join(", ")
            );
        }
        let _ = fs::remove_dir_all(&dest);
        fs::rename(&tmp, &dest)?;
        let names: Vec<String> = fetched.iter().map(|d| d.display().to_string()).collect();
        fs::write(&marker, names.join("\n") + "\n")?;
        // The unpacked tree is the cache; the .debs are no longer needed.
        for deb in fetched {
            let _ = fs::remove_file(deb);
        }
    }
    let (bzimage, release, modules_dir) = find_kernel(&dest)
        .ok_or_else(|| anyhow!("{pkg}: no kernel image in {}", dest.display()))?;
    Ok(KernelAssets {
        label: label.to_string(),
        release: Some(release),
        package: Some(pkg.to_string()),
        bzimage,
        modules_dir,
    })
}

/// The kernel image of an unpacked package tree, its release and its
/// modules directory: `boot/vmlinuz-REL` with `lib/modules/REL` (up to
/// 6.x), or `usr/lib/modules/REL/vmlinuz` (7.x).
fn find_kernel(dest: &Path) -> Option<(PathBuf, String, Option<PathBuf>)> {
    let modules_of = |rel: &str| {
        ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|b| dest.join(b).join(rel))
            .find(|p| p.join("kernel").is_dir())
    };
    if let Ok(Some(image)) = first_entry(&dest.join("boot"), "vmlinuz-") {
        let rel = image
            .file_name()?
            .to_str()?
            .strip_prefix("vmlinuz-")?
            .to_string();
        let modules = modules_of(&rel);
        return Some((image, rel, modules));
    }
    let mut rels: Vec<PathBuf> = fs::read_dir(dest.join("usr/lib/modules"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("vmlinuz").is_file())
        .collect();
    rels.sort();
    let dir = rels.pop()?;
    let rel = dir.file_name()?.to_str()?.to_string();
    let modules = modules_of(&rel);
    Some((dir.join("vmlinuz"), rel, modules))
}

fn find_deb(dir: &Path, pkg: &str) -> Result<Option<PathBuf>> {
    first_entry(dir, &format!("{pkg}_"))
        .map(|p| p.filter(|p| p.extension().is_some_and(|e| e == "deb")))
}

fn first_entry(dir: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    Ok(found.pop())
}

/// The version string embedded in a bzImage (`6.1.0-30-amd64 (debian-kernel@…) #1 SMP …`),
/// read through the `kernel_version` pointer of the x86 boot protocol header.
pub fn bzimage_version(image: &[u8]) -> Option<String> {
    if image.len() < 0x210 || &image[0x202..0x206] != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([image[0x20e], image[0x20f]]) as usize;
    if ptr == 0 {
        return None;
    }
    let start = ptr + 0x200;
    let rest = image.get(start..)?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(rest.len())
        .min(256);
    let s = String::from_utf8_lossy(&rest[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The compressed kernel inside a bzImage: the decompressor command for its
/// format and the payload (without the 4-byte size the kernel build appends).
pub fn bzimage_payload(image: &[u8]) -> Option<(&'static [&'static str], &[u8])> {
    if image.len() < 0x250 || &image[0x202..0x206] != b"HdrS" {
        return None;
    }
    let version = u16::from_le_bytes([image[0x206], image[0x207]]);
    if version < 0x208 {
        return None;
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let u32at = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap()) as usize;
    let start = (setup_sects + 1) * 512 + u32at(0x248);
    let len = u32at(0x24c);
    let payload = image.get(start..start.checked_add(len)?)?;
    let tool: &'static [&'static str] = if payload.starts_with(b"\xfd7zXZ\0") {
        &["xz", "-dc", "--single-stream"]
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        &["zstd", "-dcq"]
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        &["gzip", "-dc"]
    } else if payload.starts_with(&[0x5d, 0x00, 0x00]) {
        &["xz", "-dc", "--format=lzma"]
    } else {
        return None;
    };
    Some((tool, &payload[..payload.len().saturating_sub(4)]))
}

/// True if an ELF vmlinux has the Xen PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`),
/// which lets QEMU boot it directly with `-kernel`.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u16at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64at(32), u16at(54), u16at(56));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if ph + 56 > elf.len() || u32at(ph) != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64at(ph + 8), u64at(ph + 32));
        let Some(notes) = elf.get(off..off.saturating_add(size)) else {
            continue;
        };
        let mut p = 0;
        while p + 12 <= notes.len() {
            let n = |o: usize| u32::from_le_bytes(notes[o..o + 4].try_into().unwrap()) as usize;
            let (namesz, descsz, typ) = (n(p), n(p + 4), n(p + 8));
            let name = notes.get(p + 12..p + 12 + namesz).unwrap_or_default();
            if typ == 18 && name.starts_with(b"Xen") {
                return true;
            }
            p += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    false
}

/// The uncompressed vmlinux of a bzImage, cached at `out`, if it can be
/// booted directly (PVH): under TCG this skips the in-guest decompression,
/// about 2 s for an xz kernel. `None` means "boot the bzImage".
pub fn pvh_vmlinux(bzimage: &Path, out: &Path) -> Result<Option<PathBuf>> {
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    if out.is_file() && mtime(out) >= mtime(bzimage) {
        return Ok(Some(out.to_path_buf()));
    }
    let image = fs::read(bzimage)?;
    let Some((tool, payload)) = bzimage_payload(&image) else {
        return Ok(None);
    };
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", tool[0]))?;
    let mut stdin = child.stdin.take().expect("piped");
    let data = payload.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&data);
    });
    let output = child.wait_with_output()?;
    let _ = writer.join();
    if !has_pvh_note(&output.stdout) {
        return Ok(None);
    }
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = out.with_extension("partial");
    fs::write(&tmp, &output.stdout)?;
    fs::rename(&tmp, out)?;
    Ok(Some(out.to_path_buf()))
}

/// A module ready to be put into the initramfs, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// Path of the (possibly compressed) module relative to the modules dir.
    pub rel: String,
    /// Uncompressed `.ko` contents.
    pub data: Vec<u8>,
}

/// How the overlay filesystem is provided by a kernel's modules dir.
#[derive(Debug)]
pub enum OverlaySource {
    /// Modules to insmod, dependencies first.
    Modules(Vec<Module>),
    /// Listed in modules.builtin.
    BuiltIn,
    /// Nothing found; the reason says where we looked.
    Missing(String),
}

/// Module name as the kernel sees it: file stem without `.ko*`, `-` → `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Parse `modules.dep`: module name → (relative path, dependency paths in
/// the order modprobe lists them).
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim();
        if path.is_empty() {
            continue;
        }
        let deps = deps.split_whitespace().map(str::to_string).collect();
        map.insert(module_name(path), (path.to_string(), deps));
    }
    map
}

/// The `depends=` field of a module's `.modinfo` section.
pub fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    let needle = b"\0depends=";
    let Some(pos) = ko.windows(needle.len()).position(|w| w == needle) else {
        return Vec::new();
    };
    let rest = &ko[pos + needle.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(|s| s.trim().replace('-', "_"))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Read a module, decompressing `.xz`, `.zst` and `.gz` with the host tools
/// (busybox insmod in the guest may not handle compressed modules).
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool: Option<(&str, &[&str])> = if name.ends_with(".xz") {
        Some(("xz", &["-dc"]))
    } else if name.ends_with(".zst") {
        Some(("zstd", &["-dcq"]))
    } else if name.ends_with(".gz") {
        Some(("gzip", &["-dc"]))
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some((tool, args)) => {
            let out = Command::new(tool)
                .args(args)
                .arg(path)
                .output()
                .with_context(|| format!("running {tool} to decompress {}", path.display()))?;
            if !out.status.success() {
                bail!(
                    "{tool} {} failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(out.stdout)
        }
    }
}

/// Index of every module file below `dir/kernel` (and `dir/updates`,
/// `dir/extra`): name → path relative to `dir`.
fn index_modules(dir: &Path) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut stack: Vec<PathBuf> = ["kernel", "updates", "extra"]
        .iter()
        .map(|d| dir.join(d))
        .filter(|d| d.is_dir())
        .collect();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(f) = p.file_name().and_then(|f| f.to_str()) {
                if f.contains(".ko") {
                    if let Ok(rel) = p.strip_prefix(dir) {
                        map.entry(module_name(f))
                            .or_insert_with(|| rel.to_string_lossy().into_owned());
                    }
                }
            }
        }
    }
    map
}

/// Collect `module` and its dependencies from a modules dir, dependencies
/// first. Uses `modules.dep` when the package ships one (Debian's do not:
/// depmod runs at install time), otherwise each module's `depends=`.
pub fn module_chain(dir: &Path, module: &str) -> Result<OverlaySource> {
    let want = module.replace('-', "_");
    if let Ok(builtin) = fs::read_to_string(dir.join("modules.builtin")) {
        if builtin.lines().any(|l| module_name(l.trim()) == want) {
            return Ok(OverlaySource::BuiltIn);
        }
    }
    let dep_file = fs::read_to_string(dir.join("modules.dep")).ok();
    let deps_db = dep_file.as_deref().map(parse_modules_dep);
    let index = if deps_db.is_none() {
        index_modules(dir)
    } else {
        BTreeMap::new()
    };
    let locate = |name: &str| -> Option<String> {
        match &deps_db {
            Some(db) => db.get(name).map(|(p, _)| p.clone()),
            None => index.get(name).cloned(),
        }
    };
    if locate(&want).is_none() {
        return Ok(OverlaySource::Missing(format!(
            "no {want}.ko* in {} and not in modules.builtin",
            dir.display()
        )));
    }

    // Depth-first, dependencies before dependants.
    let mut order: Vec<Module> = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(want.clone(), false)];
    let mut loaded: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while let Some((name, expanded)) = stack.pop() {
        if expanded {
            let rel = locate(&name).expect("located before expanding");
            let data = loaded.remove(&name).expect("read before expanding");
            order.push(Module { name, rel, data });
            continue;
        }
        if !seen.insert(name.clone()) {
            continue;
        }
        let rel = locate(&name).ok_or_else(|| {
            anyhow!(
                "module {name} (needed by {want}) not found in {}",
                dir.display()
            )
        })?;
        let data = read_module(&dir.join(&rel))?;
        let deps: Vec<String> = match &deps_db {
            Some(db) => db
                .get(&name)
                .map(|(_, d)| d.iter().map(|p| module_name(p)).collect())
                .unwrap_or_default(),
            None => modinfo_depends(&data),
        };
        loaded.insert(name.clone(), data);
        stack.push((name, true));
        for d in deps.into_iter().rev() {
            if !seen.contains(&d) {
                stack.push((d, false));
            }
        }
    }
    Ok(OverlaySource::Modules(order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("kernel/fs/overlayfs/overlay.ko", "overlay")]
    #[case("kernel/fs/overlayfs/overlay.ko.xz", "overlay")]
    #[case("kernel/drivers/foo/snd-hda-core.ko.zst", "snd_hda_core")]
    #[case("overlay.ko.gz", "overlay")]
    fn module_names(#[case] path: &str, #[case] want: &str) {
        assert_eq!(module_name(path), want);
    }

    #[test]
    fn parses_modules_dep() {
        let db = parse_modules_dep(
            "kernel/fs/overlayfs/overlay.ko.xz:\n\
             kernel/a/b-c.ko: kernel/x/dep1.ko kernel/y/dep2.ko.zst\n\
             \n",
        );
        assert_eq!(db["overlay"].0, "kernel/fs/overlayfs/overlay.ko.xz");
        assert!(db["overlay"].1.is_empty());
        assert_eq!(
            db["b_c"].1,
            vec!["kernel/x/dep1.ko", "kernel/y/dep2.ko.zst"]
        );
    }

    #[rstest]
    #[case(b"\x7fELF...\0license=GPL\0depends=\0vermagic=6.1\0".as_slice(), vec![])]
    #[case(b"junk\0depends=libcrc32c,nf-conntrack\0name=x\0".as_slice(), vec!["libcrc32c", "nf_conntrack"])]
    #[case(b"no modinfo here".as_slice(), vec![])]
    fn reads_modinfo_depends(#[case] ko: &[u8], #[case] want: Vec<&str>) {
        assert_eq!(modinfo_depends(ko), want);
    }

    #[test]
    fn bzimage_version_from_header() {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x0300u16.to_le_bytes());
        let v = b"6.1.0-30-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        img[0x500..0x500 + v.len()].copy_from_slice(v);
        assert_eq!(
            bzimage_version(&img).as_deref(),
            Some("6.1.0-30-amd64 (debian-kernel@lists.debian.org) #1 SMP")
        );
        assert_eq!(bzimage_version(&[0u8; 0x300]), None);
    }

    fn bzimage_with(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 0x1000];
        img[0x1f1] = 3; // setup sectors: protected-mode code at (3+1)*512
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.resize(0x800 + 0x100, 0);
        img.extend_from_slice(payload);
        img.extend_from_slice(&[0u8; 64]);
        img
    }

    #[rstest]
    #[case(b"\xfd7zXZ\0rest-of-xz\x01\x02\x03\x04".as_slice(), Some("xz"))]
    #[case(b"\x28\xb5\x2f\xfdzstd....".as_slice(), Some("zstd"))]
    #[case(b"\x1f\x8b\x08gzip....".as_slice(), Some("gzip"))]
    #[case(b"unknown format".as_slice(), None)]
    fn finds_bzimage_payload(#[case] payload: &[u8], #[case] tool: Option<&str>) {
        let img = bzimage_with(payload);
        let got = bzimage_payload(&img);
        assert_eq!(got.map(|(t, _)| t[0]), tool);
        if let Some((_, p)) = got {
            assert_eq!(p, &payload[..payload.len() - 4]);
        }
    }

    fn elf_with_note(name: &[u8], typ: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 0x200];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        // phdr 0: PT_LOAD (ignored); phdr 1: PT_NOTE at 0x100
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        let ph = 64 + 56;
        elf[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes());
        elf[ph + 8..ph + 16].copy_from_slice(&0x100u64.to_le_bytes());
        let mut notes = Vec::new();
        // An unrelated GNU build-id note first, then the one under test.
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&20u32.to_le_bytes());
        notes.extend_from_slice(&3u32.to_le_bytes());
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&[0xaa; 20]);
        notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&typ.to_le_bytes());
        notes.extend_from_slice(name);
        notes.resize(notes.len().div_ceil(4) * 4, 0);
        notes.extend_from_slice(&[1, 2, 3, 4]);
        elf[ph + 32..ph + 40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        elf[0x100..0x100 + notes.len()].copy_from_slice(&notes);
        elf
    }

    #[rstest]
    #[case(b"Xen\0".as_slice(), 18, true)]
    #[case(b"Xen\0".as_slice(), 17, false)]
    #[case(b"Linux\0".as_slice(), 18, false)]
    fn pvh_note(#[case] name: &[u8], #[case] typ: u32, #[case] want: bool) {
        assert_eq!(has_pvh_note(&elf_with_note(name, typ)), want);
    }

    #[test]
    fn pvh_note_needs_elf() {
        assert!(!has_pvh_note(
            b"MZ not an elf at all, just some bytes to be long enough......."
        ));
    }

    #[test]
    fn chain_with_modules_dep_orders_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("kernel/fs/overlayfs")).unwrap();
        fs::create_dir_all(d.join("kernel/lib")).unwrap();
        fs::write(d.join("kernel/fs/overlayfs/overlay.ko"), b"ovl").unwrap();
        fs::write(d.join("kernel/lib/a.ko"), b"a").unwrap();
        fs::write(d.join("kernel/lib/b.ko"), b"b").unwrap();
        fs::write(
            d.join("modules.dep"),
            "kernel/fs/overlayfs/overlay.ko: kernel/lib/a.ko kernel/lib/b.ko\n\
             kernel/lib/a.ko: kernel/lib/b.ko\nkernel/lib/b.ko:\n",
        )
        .unwrap();
        let OverlaySource::Modules(m) = module_chain(d, "overlay").unwrap() else {
            panic!("expected modules")
        };
        let names: Vec<_> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "overlay"]);
        assert_eq!(m[2].data, b"ovl");
    }

    #[test]
    fn chain_without_modules_dep_uses_modinfo() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("kernel/fs/overlayfs")).unwrap();
        fs::create_dir_all(d.join("kernel/lib")).unwrap();
        fs::write(
            d.join("kernel/fs/overlayfs/overlay.ko"),
            b"x\0depends=dep_one\0",
        )
        .unwrap();
        fs::write(d.join("kernel/lib/dep-one.ko"), b"y\0depends=\0").unwrap();
        let OverlaySource::Modules(m) = module_chain(d, "overlay").unwrap() else {
            panic!("expected modules")
        };
        let names: Vec<_> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["dep_one", "overlay"]);
    }

    #[test]
    fn builtin_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("kernel")).unwrap();
        assert!(matches!(
            module_chain(d, "overlay").unwrap(),
            OverlaySource::Missing(_)
        ));
        fs::write(
            d.join("modules.builtin"),
            "kernel/fs/overlayfs/overlay.ko\n",
        )
        .unwrap();
        assert!(matches!(
            module_chain(d, "overlay").unwrap(),
            OverlaySource::BuiltIn
        ));
    }
}

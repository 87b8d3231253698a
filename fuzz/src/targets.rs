//! The checks of each target on one input; they run inside the jail, in the
//! fresh output directory `out`.
//!
//! Bugs (panics, so libFuzzer keeps the input): a panic or abort in the
//! library, a hang (libFuzzer's -timeout), a write outside `out` (the jail),
//! and the differential oracles below. Refusals of hostile input are fine.

use std::path::Path;
use std::sync::OnceLock;

use overlayer::tree::{self, View};
use overlayer::{ConvertOptions, Limits, ReadOptions};
use overlayer_harness::case::{build_tar, EntryType, TarEntry};

/// Inflated bytes allowed per input: far above anything the inputs build,
/// low enough that a decompression bomb in a few KiB of input (zstd reaches
/// ratios of 10^4) is refused quickly instead of filling the tmpfs.
const FUZZ_MAX_BYTES: u64 = 64 << 20;

pub fn read_options(strict: bool) -> ReadOptions {
    ReadOptions {
        limits: Limits {
            max_bytes: FUZZ_MAX_BYTES,
            ..Limits::default()
        },
        strict,
    }
}

fn entry(path: &str) -> TarEntry {
    TarEntry {
        path: path.into(),
        ..Default::default()
    }
}

fn with(path: &str, kind: EntryType, target: Option<&str>) -> TarEntry {
    TarEntry {
        path: path.into(),
        kind,
        target: target.map(String::from),
        ..Default::default()
    }
}

/// The layer under every `layer_bytes` input: content to delete, make opaque
/// and link to, and symlinks that lead (lexically) out of the root, so a
/// fuzzed layer written through them would hit the jail's sentinels
/// (`/etc/passwd`, `/victim`, `/run`) if resolution ever left the rootfs.
pub fn base_layer() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut passwd = entry("etc/passwd");
        passwd.text = "root:x:0:0".into();
        let mut f = entry("d/f");
        f.text = "f".into();
        let mut null = with("dev/null", EntryType::Char, None);
        null.rdev = Some([1, 3]);
        let entries = vec![
            with("etc/", EntryType::Dir, None),
            passwd,
            with("d/", EntryType::Dir, None),
            f,
            with("d/sub/", EntryType::Dir, None),
            entry("d/sub/g"),
            with("d/hl", EntryType::Hardlink, Some("d/f")),
            with("var/", EntryType::Dir, None),
            with("var/run", EntryType::Symlink, Some("/run")),
            with("escape", EntryType::Symlink, Some("../..")),
            with("abs", EntryType::Symlink, Some("/etc")),
            with("victim", EntryType::Symlink, Some("../../victim")),
            with("root", EntryType::Symlink, Some("/")),
            with("loop", EntryType::Symlink, Some("loop/x")),
            with("fifo", EntryType::Fifo, None),
            with("dev/", EntryType::Dir, None),
            null,
        ];
        build_tar(&entries).expect("base layer")
    })
}

/// Succeeded, or refused with (rule, layer, entry), or failed otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Refused(String, usize, String),
    Other(String),
}

fn outcome<T>(result: &overlayer::Result<T>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(e) => match (e.rule(), e.location()) {
            (Some(rule), Some((layer, entry))) => {
                Outcome::Refused(rule.code().to_string(), layer, entry.to_string())
            }
            _ => Outcome::Other(e.to_string()),
        },
    }
}

/// `apply` and `convert` run one reader and one rule set, so a refusal on
/// one side must be the same refusal on the other, and success must be
/// success. Other errors (io: e.g. ENAMETOOLONG, which only the on-disk side
/// meets) are not compared.
fn assert_same_outcome(apply: &Outcome, convert: &Outcome, what: &str) {
    match (apply, convert) {
        (Outcome::Other(_), _) | (_, Outcome::Other(_)) => {}
        (a, c) => assert!(
            a == c,
            "{what}: apply and convert disagree: apply {a:?}, convert {c:?}"
        ),
    }
}

fn fresh(out: &Path, name: &str) -> std::path::PathBuf {
    let dir = out.join(name);
    std::fs::create_dir(&dir).expect("create a work directory");
    dir
}

/// `layer_bytes`: `data` as one layer over [`base_layer`], applied and
/// converted leniently, then applied strictly. Checks: no panic, no write
/// outside `out`, apply and convert agree, and a layer that strict mode
/// accepts is applied to the very same tree in lenient mode.
pub fn layer_bytes(out: &Path, data: &[u8]) {
    let base = base_layer();
    let lenient = read_options(false);
    let flat = fresh(out, "apply");
    let applied = overlayer::apply_into(vec![base, data], &flat, &lenient);
    let converted = overlayer::convert_into(
        vec![base, data],
        &fresh(out, "convert"),
        ConvertOptions {
            read: lenient,
            ..ConvertOptions::default()
        },
    );
    let applied_outcome = outcome(&applied);
    assert_same_outcome(&applied_outcome, &outcome(&converted), "lenient");
    let strict_dir = fresh(out, "strict");
    let strict = overlayer::apply_into(vec![base, data], &strict_dir, &read_options(true));
    if strict.is_ok() {
        assert!(
            applied.is_ok(),
            "strict mode accepted a layer that lenient mode refused: {applied_outcome:?}"
        );
        let want = tree::capture(&flat).expect("capture lenient");
        let got = tree::capture(&strict_dir).expect("capture strict");
        let differences = tree::diff(&want, &got);
        assert!(
            differences.is_empty(),
            "strict and lenient trees differ: {}",
            show(&differences)
        );
    }
}

fn show(differences: &[tree::Difference]) -> String {
    differences
        .iter()
        .take(6)
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether `stack` also mounts the converted layers and compares the
/// kernel's merged view with the model: on where a trial mount shows
/// overlayfs works, off with `OVERLAYER_FUZZ_KERNEL=0`. Call outside the
/// jail (the probe mounts in a namespace of its own, and the jail has no
/// `/proc`); the answer is cached.
pub fn kernel_oracle() -> bool {
    static KERNEL: OnceLock<bool> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        if std::env::var("OVERLAYER_FUZZ_KERNEL").is_ok_and(|v| v == "0") {
            return false;
        }
        let features = overlayer_harness::kernel::probe_cached();
        if !features.overlay {
            eprintln!(
                "overlayer-fuzz: no overlay mount here ({}); the stack target runs without the kernel oracle",
                features.reason.unwrap_or_default()
            );
        }
        features.overlay
    })
}

/// Whether convert may write xattr whiteouts: the kernel reads them (probed
/// once, outside the jail).
pub fn xwhiteouts_supported() -> bool {
    overlayer_harness::kernel::probe_cached().xwhiteouts
}

/// `stack`: layers built from case entries; the model
/// (`overlayer_harness::model::run`) is the oracle for apply: both succeed
/// with equal views, or both refuse with the same rule at the same entry.
/// Convert (char-device or, with `xwhiteouts`, xattr whiteouts) must agree
/// with apply, and with `kernel` ([`kernel_oracle`]) the kernel's merged
/// view of the converted layers, mounted read-only in the jail, must equal
/// the model's, hardlink groups included.
pub fn stack(out: &Path, layers: &[Vec<TarEntry>], xwhiteouts: bool, kernel: bool) {
    let Ok(tars) = layers
        .iter()
        .map(|l| build_tar(l))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let model = overlayer_harness::model::run(layers);
    let opts = read_options(false);
    let flat = fresh(out, "apply");
    let readers: Vec<&[u8]> = tars.iter().map(Vec::as_slice).collect();
    let applied = overlayer::apply_into(readers.clone(), &flat, &opts);
    let applied_view: overlayer::Result<View> = applied.and_then(|_| tree::capture(&flat));
    match (&model, &applied_view) {
        (Ok(want), Ok(got)) => {
            let differences = tree::diff(want, got);
            assert!(
                differences.is_empty(),
                "model vs apply: {}\nlayers: {}",
                show(&differences),
                dump(layers)
            );
        }
        (Err(want), Err(e)) => assert!(
            overlayer_harness::replay::matches_error(want, e) || same_parent_refusal(want, e),
            "model refuses with {} at layer {} entry {:?}; apply says: {e}\nlayers: {}",
            want.rule,
            want.layer,
            want.entry,
            dump(layers)
        ),
        (Err(want), Ok(_)) => panic!(
            "model refuses with {} at layer {} entry {:?}; apply succeeded\nlayers: {}",
            want.rule,
            want.layer,
            want.entry,
            dump(layers)
        ),
        (Ok(_), Err(e)) => panic!("model succeeds; apply fails: {e}\nlayers: {}", dump(layers)),
    }
    let conv_dir = fresh(out, "convert");
    let converted = overlayer::convert_into(
        readers,
        &conv_dir,
        ConvertOptions {
            read: opts,
            xwhiteouts,
            ..ConvertOptions::default()
        },
    );
    assert_same_outcome(&outcome(&applied_view), &outcome(&converted), "stack");
    if let (true, Ok(converted), Ok(want)) = (kernel, &converted, &model) {
        let merged = fresh(out, "m");
        let mount = overlayer::mount::OverlayMount {
            base: conv_dir.clone(),
            layers: (0..converted.layers.len()).map(|i| i.to_string()).collect(),
            userxattr: false,
        };
        mount.mount(&merged).expect("mount the converted layers");
        let view = tree::capture(&merged);
        overlayer::mount::unmount(&merged).expect("unmount");
        let view = view.expect("capture the merged view");
        static FIRST: std::sync::Once = std::sync::Once::new();
        FIRST.call_once(|| {
            eprintln!("overlayer-fuzz: kernel oracle active (first merged view captured)")
        });
        let differences = tree::diff(&view, want);
        assert!(
            differences.is_empty(),
            "model vs kernel: {}\nlayers: {}",
            show(&differences),
            dump(layers)
        );
    }
}

/// Known model difference (reported): for a name that cannot be normalised
/// the library names the entry as stored (`/../`, cases/README.md) while
/// `model::run` shows it with empty and `.` components dropped (`..`).
/// Such refusals are compared on rule and layer only.
fn same_parent_refusal(
    want: &overlayer_harness::case::ExpectedError,
    e: &overlayer::Error,
) -> bool {
    want.rule == "parent-component"
        && e.rule().map(|r| r.code()) == Some("parent-component")
        && e.location().map(|(layer, _)| layer) == Some(want.layer)
}

/// The layers as case JSON (paste into a case file's `layers`).
pub fn dump(layers: &[Vec<TarEntry>]) -> String {
    serde_json::to_string(layers).unwrap_or_else(|e| format!("<{e}>"))
}

//! Parsing of the kernel selection (`VM_KERNELS` / `--kernels`) and the pure
//! half of resolving a Debian kernel series to a package name.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// Kernels booted when nothing else is asked for.
/// 5.10 (bullseye) is the LTS before `userxattr` and tmpfs `user.*` xattrs;
/// 6.1 (bookworm) lacks xattr whiteouts; 6.12 has them; 7.2 (sid) is the
/// newest Debian builds.
pub const DEFAULT_KERNELS: &str = "5.10,6.1,6.12,7.2";

/// One kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    /// A Debian kernel series such as `6.1`: the newest
    /// `linux-image-6.1.*-amd64` apt knows about.
    Series(String),
    /// A full Debian package name such as `linux-image-6.1.0-30-amd64`.
    Package(String),
    /// A bzImage on disk, optionally with its `/lib/modules/VERSION` dir
    /// (written `PATH:MODULES_DIR`).
    Path {
        kernel: PathBuf,
        modules: Option<PathBuf>,
    },
}

impl KernelSpec {
    /// Short human label used in progress lines before the kernel is known.
    pub fn label(&self) -> String {
        match self {
            KernelSpec::Series(s) => s.clone(),
            KernelSpec::Package(p) => p.clone(),
            KernelSpec::Path { kernel, .. } => kernel.display().to_string(),
        }
    }
}

/// Parse a kernel list: items separated by commas and/or whitespace.
///
/// Each item is a series (`6.1`, `6.12`), a Debian package name
/// (`linux-image-...`), or a path (anything containing `/`) to a bzImage with
/// an optional `:MODULES_DIR` suffix.
pub fn parse_kernel_list(list: &str) -> Result<Vec<KernelSpec>> {
    let mut out = Vec::new();
    for item in list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        out.push(parse_kernel_spec(item)?);
    }
    if out.is_empty() {
        bail!("empty kernel list {list:?}");
    }
    Ok(out)
}

/// Parse a single item of the kernel list.
pub fn parse_kernel_spec(item: &str) -> Result<KernelSpec> {
    if item.contains('/') {
        let (kernel, modules) = match item.split_once(':') {
            Some((k, m)) if !m.is_empty() => (k, Some(PathBuf::from(m))),
            Some((k, _)) => (k, None),
            None => (item, None),
        };
        if kernel.is_empty() {
            bail!("kernel spec {item:?}: empty bzImage path");
        }
        return Ok(KernelSpec::Path {
            kernel: PathBuf::from(kernel),
            modules,
        });
    }
    if is_series(item) {
        return Ok(KernelSpec::Series(item.to_string()));
    }
    if item.starts_with("linux-image-")
        && item
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c))
    {
        return Ok(KernelSpec::Package(item.to_string()));
    }
    bail!(
        "kernel spec {item:?} is not a series like 6.1, a package like \
         linux-image-6.1.0-30-amd64, or a path to a bzImage (must contain '/')"
    )
}

/// `MAJOR.MINOR`, both numeric.
fn is_series(s: &str) -> bool {
    match s.split_once('.') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.chars().all(|c| c.is_ascii_digit())
                && b.chars().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// The version part of a plain amd64 kernel image package name in `series`,
/// with whether it is the `-unsigned` variant; `None` for meta packages,
/// other flavours (`cloud`, `rt`), debug symbols and other series.
pub fn image_version<'a>(series: &str, name: &'a str) -> Option<(&'a str, bool)> {
    let rest = name.strip_prefix("linux-image-")?;
    let (version, unsigned) = if let Some(v) = rest.strip_suffix("-amd64-unsigned") {
        (v, true)
    } else {
        (rest.strip_suffix("-amd64")?, false)
    };
    let after = version.strip_prefix(series)?.strip_prefix('.')?;
    if after.is_empty() || !after.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    // A flavour shows up as a purely alphabetic '-' separated token.
    if version
        .split('-')
        .any(|tok| tok.chars().all(|c| c.is_ascii_alphabetic()))
    {
        return None;
    }
    Some((version, unsigned))
}

/// All digit runs of a version as numbers, for ordering kernel ABIs:
/// `6.1.0-56` → `[6, 1, 0, 56]`, `6.12.117+deb12` → `[6, 12, 117, 12]`.
pub fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect()
}

/// Pick the newest plain amd64 image package of `series` among `names`
/// (e.g. the first column of `apt-cache search`), preferring the signed
/// package over `-unsigned` for the same version.
pub fn pick_newest<'a, I>(series: &str, names: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    names
        .into_iter()
        .filter_map(|n| image_version(series, n).map(|(v, unsigned)| (n, v, unsigned)))
        .max_by(|a, b| {
            version_key(a.1)
                .cmp(&version_key(b.1))
                .then(b.2.cmp(&a.2))
                .then(b.0.cmp(a.0))
        })
        .map(|(n, _, _)| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("6.1", KernelSpec::Series("6.1".into()))]
    #[case("6.12", KernelSpec::Series("6.12".into()))]
    #[case(
        "linux-image-6.1.0-30-amd64",
        KernelSpec::Package("linux-image-6.1.0-30-amd64".into())
    )]
    #[case(
        "linux-image-6.12.117+deb12-amd64",
        KernelSpec::Package("linux-image-6.12.117+deb12-amd64".into())
    )]
    #[case("/boot/vmlinuz", KernelSpec::Path { kernel: "/boot/vmlinuz".into(), modules: None })]
    #[case("./bzImage:", KernelSpec::Path { kernel: "./bzImage".into(), modules: None })]
    #[case(
        "/k/bzImage:/k/lib/modules/6.9.0",
        KernelSpec::Path { kernel: "/k/bzImage".into(), modules: Some("/k/lib/modules/6.9.0".into()) }
    )]
    fn parses_one_spec(#[case] input: &str, #[case] want: KernelSpec) {
        assert_eq!(parse_kernel_spec(input).unwrap(), want);
    }

    #[rstest]
    #[case("6")]
    #[case("6.x")]
    #[case("bzImage")]
    #[case("linux-headers-6.1.0-30-amd64")]
    #[case("linux-image-6.1;rm")]
    #[case(":/mods")]
    fn rejects_bad_spec(#[case] input: &str) {
        assert!(parse_kernel_spec(input).is_err(), "{input} accepted");
    }

    #[rstest]
    #[case("6.1,6.12", 2)]
    #[case(" 6.1  6.12 ,, linux-image-6.1.0-1-amd64\n", 3)]
    #[case("/a/bzImage", 1)]
    fn parses_lists(#[case] input: &str, #[case] n: usize) {
        assert_eq!(parse_kernel_list(input).unwrap().len(), n);
    }

    #[test]
    fn empty_list_is_an_error() {
        assert!(parse_kernel_list(" , ").is_err());
    }

    #[rstest]
    #[case("6.1", "linux-image-6.1.0-56-amd64", Some(("6.1.0-56", false)))]
    #[case("6.1", "linux-image-6.1.0-56-amd64-unsigned", Some(("6.1.0-56", true)))]
    #[case("6.1", "linux-image-6.1.0-56-amd64-dbg", None)]
    #[case("6.1", "linux-image-6.1.0-56-rt-amd64", None)]
    #[case("6.1", "linux-image-6.1.0-56-cloud-amd64", None)]
    #[case("6.1", "linux-image-6.12.117+deb12-amd64", None)]
    #[case("6.12", "linux-image-6.12.117+deb12-amd64", Some(("6.12.117+deb12", false)))]
    #[case("6.12", "linux-image-6.12.12+bpo-amd64", Some(("6.12.12+bpo", false)))]
    #[case("6.12", "linux-image-6.12-amd64", None)]
    #[case("6.12", "linux-image-6.12.117+deb12-cloud-amd64", None)]
    #[case("6.12", "linux-image-amd64", None)]
    fn image_versions(
        #[case] series: &str,
        #[case] name: &str,
        #[case] want: Option<(&str, bool)>,
    ) {
        assert_eq!(image_version(series, name), want);
    }

    #[test]
    fn picks_newest_signed() {
        let names = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-56-amd64-unsigned",
            "linux-image-6.1.0-56-amd64",
            "linux-image-6.1.0-47-amd64",
            "linux-image-6.1.0-56-rt-amd64",
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.12+bpo-amd64",
            "linux-image-6.12.9+bpo-amd64",
            "linux-image-6.12-amd64",
        ];
        assert_eq!(
            pick_newest("6.1", names).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(
            pick_newest("6.12", names).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64")
        );
        assert_eq!(pick_newest("5.10", names), None);
        assert_eq!(
            pick_newest("6.1", ["linux-image-6.1.0-3-amd64-unsigned"]).as_deref(),
            Some("linux-image-6.1.0-3-amd64-unsigned")
        );
    }
}

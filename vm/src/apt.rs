//! A private apt configuration under the cache (`vm/cache/apt/`): its own
//! sources list, package lists and archive cache, so kernels of other Debian
//! suites (bullseye's 5.10, sid's newest) can be found and fetched with
//! `apt-get download` without changing the host's sources or lists.
//!
//! The mirror is the host's own (the first `deb` source for its codename,
//! and its security source), so a machine that only reaches a local mirror
//! keeps working; signatures are checked against the host's keyrings as for
//! any other apt source.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

/// Suites listed besides the host's own `CODENAME`, `CODENAME-backports` and
/// `CODENAME-security`: bullseye for 5.10 (the LTS before `userxattr`, tmpfs
/// `user.*` xattrs and xattr whiteouts), sid for the newest kernel Debian
/// builds.
pub const EXTRA_SUITES: [&str; 3] = ["bullseye", "bullseye-security", "sid"];

/// Lists younger than this are used as they are (a warm run needs no
/// network); older ones are refreshed once per run.
pub const MAX_LIST_AGE: Duration = Duration::from_secs(24 * 3600);

const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY: &str = "http://deb.debian.org/debian-security";

/// The private configuration: `dir/sources.list`, `dir/lists/`,
/// `dir/cache/`.
pub struct PrivateApt {
    dir: PathBuf,
    codename: String,
}

/// A source line: URI and suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suite: String,
}

impl PrivateApt {
    /// Sets up `cache/apt` (sources written from the host's mirrors).
    pub fn new(cache: &Path) -> Result<PrivateApt> {
        let dir = cache.join("apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let codename = host_codename();
        let host = host_sources();
        let sources = private_sources(&codename, &host);
        let text: String = sources
            .iter()
            .map(|s| format!("deb {} {} main\n", s.uri, s.suite))
            .collect();
        let list = dir.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(text.as_str()) {
            fs::write(&list, &text).with_context(|| format!("writing {}", list.display()))?;
            // New sources: the old lists do not describe them.
            let _ = fs::remove_file(dir.join("updated"));
        }
        forget_old_host_source(&codename);
        Ok(PrivateApt { dir, codename })
    }

    /// The host's codename the suites were derived from.
    pub fn codename(&self) -> &str {
        &self.codename
    }

    /// The suites of the private sources list.
    pub fn suites(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("sources.list"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
            .collect()
    }

    /// The `-o` options that make apt use only this configuration.
    pub fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        [
            format!("Dir::Etc::SourceList={d}/sources.list"),
            "Dir::Etc::SourceParts=/dev/null".to_string(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            "Acquire::Languages=none".to_string(),
            "APT::Architectures::=amd64".to_string(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_string(),
            "APT::Sandbox::User=root".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect()
    }

    /// A command line a user can paste to see the same thing.
    pub fn shown(&self, tool: &str, args: &[&str]) -> String {
        let mut words = vec![tool.to_string()];
        words.extend(self.options());
        words.extend(args.iter().map(|a| a.to_string()));
        words.join(" ")
    }

    /// True when the lists were refreshed within [`MAX_LIST_AGE`].
    pub fn fresh(&self) -> bool {
        fs::metadata(self.dir.join("updated"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < MAX_LIST_AGE)
    }

    /// `apt-get update` with the private configuration. A suite that fails
    /// (not served any more, a key the host lacks) is a warning in the
    /// returned text, not an error: the other suites still count.
    pub fn update(&self) -> Result<String> {
        let out = Command::new("apt-get")
            .args(self.options())
            .args(["update", "-q"])
            .output()
            .context("running apt-get update (private configuration)")?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let listed = fs::read_dir(self.dir.join("lists"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
            .unwrap_or(false);
        if !out.status.success() && !listed {
            bail!(
                "{} failed ({}): {}",
                self.shown("apt-get", &["update"]),
                out.status,
                stderr.trim()
            );
        }
        fs::write(self.dir.join("updated"), b"")?;
        Ok(stderr
            .lines()
            .filter(|l| l.starts_with("W:") || l.starts_with("E:"))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Runs `tool` with the private options and `args` in `dir`; its
    /// stdout, or an error naming the command a user can paste.
    fn run(&self, tool: &str, args: &[&str], dir: Option<&Path>) -> Result<String> {
        let mut cmd = Command::new(tool);
        cmd.args(self.options()).args(args);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {tool} {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                self.shown(tool, args),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Package names starting with `prefix` in the private lists.
    pub fn pkgnames(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .run("apt-cache", &["pkgnames", prefix], None)?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The packages a kernel image package is split into (its `Depends` on
    /// `linux-binary-*` and `linux-modules-*`); none before 7.x.
    pub fn split_parts(&self, pkg: &str) -> Result<Vec<String>> {
        let show = self.run("apt-cache", &["show", "--no-all-versions", pkg], None)?;
        Ok(split_parts_of(&show))
    }

    /// `apt-get download pkg` into `dir`.
    pub fn download(&self, pkg: &str, dir: &Path) -> Result<()> {
        self.run("apt-get", &["download", "-qq", pkg], Some(dir))
            .map(drop)
    }
}

/// `linux-binary-*` and `linux-modules-*` names in a package's `Depends`.
pub fn split_parts_of(show: &str) -> Vec<String> {
    let Some(depends) = show.lines().find_map(|l| l.strip_prefix("Depends:")) else {
        return Vec::new();
    };
    depends
        .split(',')
        .filter(|alt| !alt.contains('|'))
        .filter_map(|d| d.split_whitespace().next())
        .filter(|n| n.starts_with("linux-binary-") || n.starts_with("linux-modules-"))
        .map(str::to_string)
        .collect()
}

/// Earlier versions of overlayer-vm added this file to the host's sources;
/// it is removed when it holds exactly what they wrote, and nothing else.
const OLD_HOST_LIST: &str = "/etc/apt/sources.list.d/overlayer-vm-backports.list";

fn forget_old_host_source(codename: &str) {
    let written = format!("deb http://deb.debian.org/debian {codename}-backports main\n");
    if fs::read_to_string(OLD_HOST_LIST).is_ok_and(|t| t == written)
        && fs::remove_file(OLD_HOST_LIST).is_ok()
    {
        crate::progress!(
            "removed {OLD_HOST_LIST}, which an earlier overlayer-vm added to the host's apt sources \
             (kernels are now found through vm/cache/apt)"
        );
    }
}

/// `VERSION_CODENAME` of the host, `bookworm` if unknown.
fn host_codename() -> String {
    fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VERSION_CODENAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "bookworm".to_string())
}

/// Every enabled `deb` source of the host (one-line and deb822 forms).
fn host_sources() -> Vec<Source> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => out.extend(parse_deb822(&text)),
            Some("list") | None => out.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    out
}

/// `deb [opts] URI SUITE COMPONENTS...` lines.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']').map_or("", |(_, after)| after),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(Source {
                uri: uri.trim_end_matches('/').to_string(),
                suite: suite.to_string(),
            });
        }
    }
    out
}

/// deb822 stanzas (`Types: deb`, `URIs:`, `Suites:`, `Enabled: no` skipped).
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let types = field("Types").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb")
            || field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let uris = field("URIs").unwrap_or_default();
        let suites = field("Suites").unwrap_or_default();
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                out.push(Source {
                    uri: uri.trim_end_matches('/').to_string(),
                    suite: suite.to_string(),
                });
            }
        }
    }
    out
}

/// The private sources: the host's Debian mirror (the source of its
/// codename) for the codename, its backports and the extra suites; its
/// security mirror for the `-security` suites.
pub fn private_sources(codename: &str, host: &[Source]) -> Vec<Source> {
    let archive = host
        .iter()
        .find(|s| s.suite == codename)
        .map_or(DEFAULT_MIRROR.to_string(), |s| s.uri.clone());
    let security = host
        .iter()
        .find(|s| s.suite == format!("{codename}-security"))
        .map_or(DEFAULT_SECURITY.to_string(), |s| s.uri.clone());
    let mut suites = vec![
        codename.to_string(),
        format!("{codename}-backports"),
        format!("{codename}-security"),
    ];
    suites.extend(EXTRA_SUITES.iter().map(|s| s.to_string()));
    suites.dedup();
    suites
        .into_iter()
        .map(|suite| Source {
            uri: if suite.ends_with("-security") {
                security.clone()
            } else {
                archive.clone()
            },
            suite,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_sources() {
        let text = "# comment\ndeb http://m.example/debian/ bookworm main\n\
                    deb [signed-by=/k.gpg arch=amd64] http://s.example/debian-security bookworm-security main\n\
                    deb-src http://m.example/debian bookworm main\n";
        assert_eq!(
            parse_one_line(text),
            vec![
                Source {
                    uri: "http://m.example/debian".into(),
                    suite: "bookworm".into()
                },
                Source {
                    uri: "http://s.example/debian-security".into(),
                    suite: "bookworm-security".into()
                },
            ]
        );
    }

    #[test]
    fn split_kernel_packages() {
        let show = "Package: linux-image-7.2.13+deb14-amd64\nDepends: dracut | initramfs-tools \
                    (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), \
                    linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 \
                    (= 7.2.13-1)\nPre-Depends: linux-base (>= 4.17~)\n";
        assert_eq!(
            split_parts_of(show),
            [
                "linux-binary-7.2.13+deb14-amd64",
                "linux-modules-7.2.13+deb14-amd64"
            ]
        );
        let old = "Package: linux-image-6.1.0-41-amd64\nDepends: kmod, linux-base (>= 4.3~), \
                   initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool\n";
        assert!(split_parts_of(old).is_empty());
    }

    #[test]
    fn deb822_sources() {
        let text = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\n\nTypes: deb\nURIs: http://x.example\nSuites: nodistro\n\
                    Enabled: no\n\nTypes: deb-src\nURIs: http://m.example/debian\nSuites: sid\n";
        let got = parse_deb822(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].suite, "bookworm");
        assert_eq!(got[1].suite, "bookworm-updates");
    }

    #[test]
    fn private_sources_use_the_host_mirrors() {
        let host = parse_one_line(
            "deb http://mirror.local/debian bookworm main\n\
             deb http://mirror.local/security bookworm-security main\n",
        );
        let got = private_sources("bookworm", &host);
        let lines: Vec<String> = got
            .iter()
            .map(|s| format!("{} {}", s.uri, s.suite))
            .collect();
        assert_eq!(
            lines,
            [
                "http://mirror.local/debian bookworm",
                "http://mirror.local/debian bookworm-backports",
                "http://mirror.local/security bookworm-security",
                "http://mirror.local/debian bullseye",
                "http://mirror.local/security bullseye-security",
                "http://mirror.local/debian sid",
            ]
        );
        // No host sources at all: Debian's own mirror.
        assert!(private_sources("bookworm", &[])
            .iter()
            .all(|s| s.uri.starts_with("http://deb.debian.org/")));
    }
}

//! Host tools the runner needs, installed with apt-get when missing
//! (idempotent, silent when everything is present).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::initramfs::runs_in_guest;
use crate::progress;

/// Commands needed on PATH and the Debian package providing each.
pub const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("dpkg-deb", "dpkg"),
    ("apt-get", "apt"),
];

/// Where a static busybox may live.
const BUSYBOX: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

pub fn which(cmd: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// A statically linked busybox on this host, if any.
pub fn static_busybox() -> Option<PathBuf> {
    BUSYBOX
        .iter()
        .map(Path::new)
        .find(|p| {
            std::fs::read(p).is_ok_and(|d| runs_in_guest(&d).is_ok() && !d.starts_with(b"#!"))
        })
        .map(Path::to_path_buf)
}

/// Packages to install for what is missing now.
pub fn missing_packages() -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = TOOLS
        .iter()
        .filter(|(cmd, _)| which(cmd).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if static_busybox().is_none() {
        pkgs.push("busybox-static");
    }
    pkgs
}

fn apt_install(pkgs: &[&str]) -> Result<bool> {
    let out = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("running apt-get install")?;
    if !out.status.success() {
        progress!(
            "apt-get install failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.status.success())
}

/// Install whatever is missing; with `allow_install == false` only report.
pub fn ensure(allow_install: bool) -> Result<()> {
    let pkgs = missing_packages();
    if pkgs.is_empty() {
        return Ok(());
    }
    if !allow_install {
        bail!(
            "missing host packages: {} (install them or drop --no-install)",
            pkgs.join(" ")
        );
    }
    progress!("installing host packages: {}", pkgs.join(" "));
    if !apt_install(&pkgs)? {
        progress!("retrying after apt-get update");
        let st = Command::new("apt-get").args(["update", "-qq"]).status()?;
        if !st.success() || !apt_install(&pkgs)? {
            bail!(
                "could not install {} with apt-get (are we root?)",
                pkgs.join(" ")
            );
        }
    }
    let still = missing_packages();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(())
}

//! The guest initramfs: a cpio "newc" archive written in Rust holding
//! busybox, the overlayer binary, the regression cases, the overlay module
//! chain and the generated `/init`.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::kernel::Module;

/// The guest `/init` (busybox sh).
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Minimal writer for the `newc` (SVR4, no CRC) cpio format the kernel
/// unpacks into its rootfs.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..n])?;
        self.written += n as u64;
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let header = newc_header(
            self.ino,
            mode,
            nlink,
            data.len() as u32,
            rdev,
            name.len() as u32 + 1,
        );
        self.ino += 1;
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.written += header.len() as u64 + name.len() as u64 + 1;
        self.pad()?;
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        self.pad()
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, (major, minor), &[])
    }

    /// Write the trailer and return the inner writer and the archive size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

/// The 110-byte ASCII header of one newc entry.
pub fn newc_header(
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    namesize: u32,
) -> String {
    format!(
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
         {dmaj:08X}{dmin:08X}{rmaj:08X}{rmin:08X}{namesize:08X}{check:08X}",
        uid = 0,
        gid = 0,
        mtime = 0,
        dmaj = 0,
        dmin = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        check = 0,
    )
}

/// Inputs of one guest image.
pub struct Inputs<'a> {
    pub busybox: &'a Path,
    pub overlayer: &'a Path,
    pub cases: &'a Path,
    pub modules: &'a [Module],
}

/// Write the initramfs to `out`; returns its size in bytes.
pub fn build(out: &Path, inputs: &Inputs) -> Result<u64> {
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "run",
        "root",
        "etc",
        "etc/overlayer",
        "lib",
        "lib/modules",
        "lib/modules/overlayer",
    ] {
        w.dir(d, 0o755)?;
    }
    w.dir("tmp", 0o1777)?;
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;

    let busybox = fs::read(inputs.busybox)
        .with_context(|| format!("reading {}", inputs.busybox.display()))?;
    w.file("bin/busybox", 0o755, &busybox)?;
    w.symlink("bin/sh", "busybox")?;
    let overlayer = fs::read(inputs.overlayer)
        .with_context(|| format!("reading {}", inputs.overlayer.display()))?;
    w.file("bin/overlayer", 0o755, &overlayer)?;
    w.file("init", 0o755, INIT_SCRIPT.as_bytes())?;

    let mut list = String::new();
    for (i, m) in inputs.modules.iter().enumerate() {
        let name = format!("lib/modules/overlayer/{i:02}-{}.ko", m.name);
        w.file(&name, 0o644, &m.data)?;
        list.push('/');
        list.push_str(&name);
        list.push('\n');
    }
    w.file("etc/overlayer/modules", 0o644, list.as_bytes())?;

    w.dir("cases", 0o755)?;
    if inputs.cases.is_dir() {
        add_tree(&mut w, inputs.cases, "cases")?;
    } else {
        bail!("cases directory {} does not exist", inputs.cases.display());
    }
    let (_, size) = w.finish()?;
    Ok(size)
}

/// Add the contents of `src` below `dest` (sorted, so images are reproducible).
fn add_tree<W: Write>(w: &mut CpioWriter<W>, src: &Path, dest: &str) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(src)
        .with_context(|| format!("listing {}", src.display()))?
        .collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{dest}/{}", e.file_name().to_string_lossy());
        let ft = e.file_type()?;
        let path = e.path();
        if ft.is_dir() {
            w.dir(&name, 0o755)?;
            add_tree(w, &path, &name)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)?;
            w.symlink(&name, &target.to_string_lossy())?;
        } else if ft.is_file() {
            w.file(&name, 0o644, &fs::read(&path)?)?;
        }
    }
    Ok(())
}

/// True if `data` is a statically linked ELF (no `PT_INTERP` program header)
/// or a script with a `#!` line (the stub used during development).
pub fn runs_in_guest(data: &[u8]) -> Result<(), String> {
    if data.starts_with(b"#!") {
        return Ok(());
    }
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err("not an ELF file or #! script".into());
    }
    if data[4] != 2 || data[5] != 1 {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let u16at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().unwrap()) as usize;
    let phentsize = u16at(54);
    let phnum = u16at(56);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > data.len() {
            return Err("truncated program headers".into());
        }
        let p_type = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
        if p_type == 3 {
            return Err("dynamically linked (has an ELF interpreter); build it with \
                        RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu"
                .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let h = newc_header(7, S_IFREG | 0o755, 1, 5, (0, 0), 5);
        assert_eq!(h.len(), 110);
        assert!(h.starts_with("07070100000007000081ED"));
        let h = newc_header(1, S_IFCHR | 0o600, 1, 0, (5, 1), 12);
        // rdevmajor, rdevminor are fields 10 and 11 (0-based after the magic)
        assert_eq!(&h[6 + 8 * 9..6 + 8 * 11], "0000000500000001");
    }

    #[test]
    fn archive_is_aligned_and_terminated() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/x", 0o755, b"hello").unwrap();
        w.symlink("bin/y", "x").unwrap();
        let (buf, size) = w.finish().unwrap();
        assert_eq!(buf.len() as u64, size);
        assert_eq!(buf.len() % 4, 0);
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
        // Entry 2 header starts 4-aligned after entry 1 ("bin\0" → 114, padded to 116).
        assert_eq!(&buf[116..122], b"070701");
    }

    #[test]
    fn static_detection() {
        assert!(runs_in_guest(b"#!/bin/sh\n").is_ok());
        assert!(runs_in_guest(b"hello").is_err());
        let mut elf = vec![0u8; 200];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert!(runs_in_guest(&elf).is_ok());
        elf[64..68].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert!(runs_in_guest(&elf).is_err());
    }
}

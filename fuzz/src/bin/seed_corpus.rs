//! Writes the seed corpus of the `layer_bytes` target: every layer of every
//! case under the given roots (default `../cases`), as the tar bytes the
//! harness builds (transforms applied, so compressed and damaged archives
//! are seeds too), to `corpus/layer_bytes/CASE.N.tar` (`hostile__CASE.N.tar` for `cases/hostile/CASE.json`).
//!
//! cargo run --release --bin seed-corpus -- [CASES_DIR...]

use std::path::PathBuf;

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut roots: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if roots.is_empty() {
        roots.push(here.join("../cases"));
    }
    let out = here.join("corpus/layer_bytes");
    std::fs::create_dir_all(&out).with_context(|| format!("mkdir {}", out.display()))?;
    let (mut written, mut skipped) = (0, 0);
    for path in overlayer_harness::case::discover(&roots)? {
        let file = match overlayer_harness::case::load(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("skipping {}: {e:#}", path.display());
                skipped += 1;
                continue;
            }
        };
        let layers = match file.case.layer_bytes() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("skipping {}: {e:#}", path.display());
                skipped += 1;
                continue;
            }
        };
        // Named after the case's path below its root, so `hostile/x` and `x` differ.
        let stem = roots
            .iter()
            .find_map(|r| path.strip_prefix(r).ok())
            .unwrap_or(&path)
            .with_extension("")
            .to_string_lossy()
            .replace('/', "__");
        for (i, bytes) in layers.iter().enumerate() {
            std::fs::write(out.join(format!("{stem}.{i}.tar")), bytes)?;
            written += 1;
        }
    }
    println!(
        "seed corpus: {written} layers in {} ({skipped} cases skipped)",
        out.display()
    );
    Ok(())
}

//! Every case file is one test: the userspace apply always, and convert +
//! the kernel's overlay merge when running as root (skipped with the reason
//! printed otherwise).

use std::path::PathBuf;

use overlayer_harness::case;
use overlayer_harness::kernel;
use overlayer_harness::replay::{run_case, ReplayOptions, Verdict};
use rstest::rstest;

#[rstest]
fn case_file(#[files("../cases/**/*.json")] path: PathBuf) {
    let file = case::load(&path).expect("case parses");
    let result = kernel::with_scratch(|s| {
        let modes = ReplayOptions::default().modes(s)?;
        run_case(s, &file, &modes)
    })
    .expect("harness runs");
    if let Verdict::Fail(d) = &result.apply {
        panic!("{}: apply: {d}", file.name);
    }
    match &result.kernel {
        Verdict::Fail(d) => panic!("{}: kernel: {d}", file.name),
        Verdict::Skip(reason) => eprintln!("{}: kernel side SKIPPED: {reason}", file.name),
        Verdict::Pass => {}
    }
}

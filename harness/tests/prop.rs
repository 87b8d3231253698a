//! A few hundred generated stacks: kernel(convert) = apply = model when root,
//! model = apply otherwise (the kernel side is then reported as skipped).

use overlayer_harness::kernel;
use overlayer_harness::prop::{run, PropOptions};

#[test]
fn generated_stacks_agree_three_ways() {
    if let Some(reason) = kernel::unavailable() {
        eprintln!("kernel side SKIPPED: {reason}; checking model = apply only");
    }
    let opts = PropOptions {
        cases: 400,
        seed: 0x0e7_1a7e,
        max_layers: 8,
        marks: overlayer_harness::replay::Mode::Trusted,
        kernel: true,
        read: Default::default(),
        kind: Default::default(),
    };
    let report = kernel::with_scratch(|s| Ok(run(s, &opts, |_| {}))).expect("harness runs");
    assert_eq!(
        report.failed,
        0,
        "{}\nminimal stack: {:?}",
        report.failure.unwrap_or_default(),
        report.minimal
    );
    assert!(
        report.refused.values().sum::<u64>() < 400,
        "every stack was refused"
    );
}

#[test]
fn generated_stacks_survive_convert_then_export_round_trip() {
    if !kernel::available_or_skip("convert needs mknod and trusted xattrs") {
        return;
    }
    let opts = PropOptions {
        cases: 300,
        seed: 0x5eed,
        max_layers: 8,
        marks: overlayer_harness::replay::Mode::Trusted,
        kernel: true,
        read: Default::default(),
        kind: overlayer_harness::prop::PropKind::Roundtrip,
    };
    let report = kernel::with_scratch(|s| Ok(run(s, &opts, |_| {}))).expect("harness runs");
    assert_eq!(
        report.failed,
        0,
        "{}\nminimal stack: {:?}",
        report.failure.unwrap_or_default(),
        report.minimal
    );
    assert!(report.mounted > 0, "no stack reached the round trip");
}

#[test]
fn writes_on_a_writable_overlay_export_and_apply_back_to_the_same_view() {
    if !kernel::available_or_skip("needs a writable overlay mount") {
        return;
    }
    for kind in [
        overlayer_harness::prop::PropKind::Write,
        overlayer_harness::prop::PropKind::WriteRedirect,
    ] {
        let opts = PropOptions {
            cases: 300,
            seed: 0x3417e,
            max_layers: 6,
            marks: overlayer_harness::replay::Mode::Trusted,
            kernel: true,
            read: Default::default(),
            kind,
        };
        let report = kernel::with_scratch(|s| Ok(run(s, &opts, |_| {}))).expect("harness runs");
        assert_eq!(
            report.failed,
            0,
            "{kind:?}: {}\nminimal stack: {:?}",
            report.failure.unwrap_or_default(),
            report.minimal
        );
        assert!(
            report.mounted > 0,
            "{kind:?}: no stack reached the comparison"
        );
        if kind == overlayer_harness::prop::PropKind::WriteRedirect {
            assert!(
                report.renamed_dirs > 0 && report.metacopy_files > 0,
                "no renamed directory or metacopy file was materialised: {} and {}",
                report.renamed_dirs,
                report.metacopy_files
            );
        }
    }
}

//! A few hundred generated stacks: kernel(convert) = apply = model when root,
//! model = apply otherwise (the kernel side is then reported as skipped).

use overlayer_harness::kernel;
use overlayer_harness::prop::{run, PropKind, PropOptions, PropReport};

/// Runs `cases` stacks of property `kind` in the trusted marking and
/// asserts that none failed.
fn run_clean(kind: PropKind, cases: u32, seed: u64, max_layers: usize) -> PropReport {
    let opts = PropOptions {
        cases,
        seed,
        max_layers,
        marks: overlayer_harness::case::Mode::Trusted,
        kernel: true,
        read: Default::default(),
        kind,
    };
    let report = kernel::with_scratch(|s| Ok(run(s, &opts, |_| {}))).expect("harness runs");
    assert_eq!(
        report.failed,
        0,
        "{kind:?}: {}\nminimal stack: {:?}",
        report.failure.clone().unwrap_or_default(),
        report.minimal
    );
    report
}

#[test]
fn generated_stacks_agree_three_ways() {
    if let Some(reason) = kernel::unavailable() {
        eprintln!("kernel side SKIPPED: {reason}; checking model = apply only");
    }
    let report = run_clean(PropKind::Convert, 400, 0x0e7_1a7e, 8);
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
    let report = run_clean(PropKind::Roundtrip, 300, 0x5eed, 8);
    assert!(report.mounted > 0, "no stack reached the round trip");
}

#[test]
fn writes_on_a_writable_overlay_export_and_apply_back_to_the_same_view() {
    if !kernel::available_or_skip("needs a writable overlay mount") {
        return;
    }
    for kind in [PropKind::Write, PropKind::WriteRedirect] {
        let report = run_clean(kind, 300, 0x3417e, 6);
        assert!(
            report.mounted > 0,
            "{kind:?}: no stack reached the comparison"
        );
        if kind == PropKind::WriteRedirect {
            assert!(
                report.renamed_dirs > 0 && report.metacopy_files > 0,
                "no renamed directory or metacopy file was materialised: {} and {}",
                report.renamed_dirs,
                report.metacopy_files
            );
        }
    }
}

#[test]
fn damaged_layers_are_refused_at_their_layer_or_read_as_intact() {
    if let Some(reason) = kernel::unavailable() {
        eprintln!("kernel side SKIPPED: {reason}; checking apply only");
    }
    let report = run_clean(PropKind::Damaged, 400, 0xda4a6e, 6);
    assert!(
        report.refused.get("corrupt-archive").copied().unwrap_or(0) > 100,
        "too few damaged layers were refused as corrupt: {:?}",
        report.refused
    );
}

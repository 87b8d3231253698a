//! `overlayer prop`: generated layer stacks, checked three ways. Property:
//! the kernel's merged view of `convert(stack)` = `apply(stack)` = the model.

use std::cell::RefCell;
use std::time::Instant;

use anyhow::Result;
use overlayer::tree::diff;
use overlayer::ConvertOptions;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde::Serialize;

use crate::case::{build_tar, Case, Expect, TarEntry, Transform};
use crate::kernel::{Outcome, Scratch};
use crate::replay::matches_error;
use crate::{damage, model, strategy};

/// Options of a property run.
#[derive(Debug, Clone)]
pub struct PropOptions {
    pub cases: u32,
    pub seed: u64,
    pub max_layers: usize,
    /// Overlay markings of the converted layers.
    pub marks: crate::case::Mode,
    /// Check the kernel too (when it can mount).
    pub kernel: bool,
    /// Reading options for apply (the defaults, unless a test says otherwise).
    pub read: overlayer::ReadOptions,
    /// Which property.
    pub kind: PropKind,
}

/// The property checked on each generated stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PropKind {
    /// kernel(convert(stack)) = apply(stack) = model(stack).
    #[default]
    Convert,
    /// apply(export(convert(stack))) = apply(stack) = model(stack).
    Roundtrip,
    /// Generated writes on a writable overlay (redirect_dir=off), then
    /// apply(stack + export(upper)) = the kernel's merged view.
    Write,
    /// The same with redirect_dir=on and metacopy=on: renamed lower
    /// directories and metadata-only copy-ups, materialised by export.
    WriteRedirect,
    /// One layer compressed and one byte of it flipped, or the stream cut
    /// short: apply and convert refuse it at that layer, or the view is
    /// the intact one's (see [`crate::damage`]).
    Damaged,
}

/// Summary of a run.
#[derive(Debug, Serialize)]
pub struct PropReport {
    pub cases: u32,
    pub passed: u32,
    pub failed: u32,
    pub kernel: bool,
    /// Stacks whose kernel merged view was compared.
    pub mounted: u64,
    /// Stacks that every side refused with the same error, by rule.
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Write path: renamed directories and metacopy files that export
    /// materialised from the lower layers, over all stacks.
    pub renamed_dirs: u64,
    pub metacopy_files: u64,
    /// Compared stacks with a hardlink to a lower layer's file or link (the
    /// groups convert copies up).
    pub cross_layer_links: u64,
    pub seconds: f64,
    pub stacks_per_second: f64,
    pub seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(skip)]
    pub minimal: Option<Vec<Vec<TarEntry>>>,
    /// The damage to the minimal stack (`--mode damaged`), as case transforms.
    #[serde(skip)]
    pub damaged: Vec<Transform>,
}

/// Checks one stack with the given property; `Err` describes the disagreement.
pub fn check_stack(
    scratch: &mut Scratch,
    stack: &[Vec<TarEntry>],
    opts: ConvertOptions,
    with_kernel: bool,
    kind: PropKind,
) -> Result<Checked, String> {
    let read = opts.read;
    let tars: Vec<Vec<u8>> = stack
        .iter()
        .map(|l| build_tar(l))
        .collect::<Result<_>>()
        .map_err(|e| format!("building tars: {e:#}"))?;
    let expected = model::run(stack);
    let applied = scratch
        .apply_view(&tars, &read)
        .map_err(|e| format!("apply harness: {e:#}"))?;
    agree("apply", &expected, &applied, false)?;
    let mut mounted = false;
    if with_kernel && scratch.can_mount() {
        let (side, other) = match kind {
            PropKind::Convert => ("kernel", scratch.kernel_view(&tars, opts)),
            PropKind::Roundtrip => ("roundtrip", scratch.roundtrip_view(&tars, opts)),
            PropKind::Write | PropKind::WriteRedirect | PropKind::Damaged => {
                unreachable!("write and damaged stacks have checks of their own")
            }
        };
        let other = other.map_err(|e| format!("{side}: {e:#}"))?;
        mounted = other.is_ok();
        agree(side, &expected, &other, true)?;
    }
    Ok(if let Err(e) = &expected {
        Checked::Refused(e.rule.clone())
    } else if mounted {
        Checked::Mounted
    } else {
        Checked::Applied
    })
}

/// How far one stack went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// All sides refused it with the same error (rule code).
    Refused(String),
    /// Model and apply agreed on a view; no kernel.
    Applied,
    /// The kernel's merged view agreed too.
    Mounted,
    /// Write path: the kernel's view after the writes agreed with the
    /// export applied; with what export materialised.
    Written(overlayer::ExportSummary),
}

fn agree(
    side: &str,
    model: &Result<overlayer::tree::View, crate::case::ExpectedError>,
    got: &Outcome,
    kernel: bool,
) -> Result<(), String> {
    match (model, got) {
        (Ok(want), Ok(view)) => match differences(want, view, kernel) {
            None => Ok(()),
            Some(shown) => Err(format!("model vs {side}: {shown}")),
        },
        (Err(want), Err(e)) if matches_error(want, e) => Ok(()),
        (Err(want), Err(e)) => Err(format!(
            "model refuses with {} at layer {} entry {:?}; {side} says: {e}",
            want.rule, want.layer, want.entry
        )),
        (Err(want), Ok(_)) => Err(format!(
            "model refuses with {} at layer {} entry {:?}; {side} succeeded",
            want.rule, want.layer, want.entry
        )),
        (Ok(_), Err(e)) => Err(format!("model succeeds; {side} fails: {e}")),
    }
}

/// The first differences between the model's view and a side's, if any;
/// `kernel`: the side is the kernel's (its view is the reference).
pub(crate) fn differences(
    want: &overlayer::tree::View,
    got: &overlayer::tree::View,
    kernel: bool,
) -> Option<String> {
    let found = if kernel {
        diff(got, want)
    } else {
        diff(want, got)
    };
    let shown: Vec<String> = found.iter().take(6).map(|d| d.to_string()).collect();
    (!shown.is_empty()).then(|| shown.join("; "))
}

/// Checks one stack with one layer damaged (see [`crate::damage`]).
pub fn check_damaged(
    scratch: &mut Scratch,
    stack: &[Vec<TarEntry>],
    damage: damage::Damage,
    opts: ConvertOptions,
    with_kernel: bool,
) -> Result<(Checked, Vec<Transform>), String> {
    let tars: Vec<Vec<u8>> = stack
        .iter()
        .map(|l| build_tar(l))
        .collect::<Result<_>>()
        .map_err(|e| format!("building tars: {e:#}"))?;
    let layer = damage.layer(tars.len());
    let transforms = damage
        .transforms(layer, &tars[layer])
        .map_err(|e| format!("damaging layer {layer}: {e:#}"))?;
    let tars = damage::damaged(&tars, &transforms).map_err(|e| format!("{e:#}"))?;
    let intact = model::run(stack);
    let applied = scratch
        .apply_view(&tars, &opts.read)
        .map_err(|e| format!("apply harness: {e:#}"))?;
    damage::judge("apply", layer, &intact, &applied, false)?;
    let mut mounted = false;
    if with_kernel && scratch.can_mount() {
        let kernel = scratch
            .kernel_view(&tars, opts)
            .map_err(|e| format!("kernel: {e:#}"))?;
        damage::judge("kernel", layer, &intact, &kernel, true)?;
        mounted = kernel.is_ok();
    }
    let checked = match &applied {
        Err(e) => Checked::Refused(e.rule().map_or("io", |r| r.code()).to_string()),
        Ok(_) if mounted => Checked::Mounted,
        Ok(_) => Checked::Applied,
    };
    Ok((checked, transforms))
}

/// Checks one stack and write sequence with the write-path property.
pub fn check_write(
    scratch: &mut Scratch,
    stack: &[Vec<TarEntry>],
    ops: &[crate::write::WriteOp],
    opts: ConvertOptions,
    redirect_dir: bool,
) -> Result<Checked, String> {
    use crate::kernel::WriteOutcome;
    if let Err(e) = model::run(stack) {
        return Ok(Checked::Refused(e.rule));
    }
    let tars: Vec<Vec<u8>> = stack
        .iter()
        .map(|l| build_tar(l))
        .collect::<Result<_>>()
        .map_err(|e| format!("building tars: {e:#}"))?;
    match scratch
        .write_view(&tars, ops, redirect_dir, opts)
        .map_err(|e| format!("write path: {e:#}"))?
    {
        WriteOutcome::LowerRefused(e) => {
            Err(format!("the model accepts the stack, convert refuses: {e}"))
        }
        WriteOutcome::Views {
            kernel,
            flat,
            export,
            ..
        } => match differences(&flat, &kernel, true) {
            None => Ok(Checked::Written(export)),
            Some(shown) => Err(format!(
                "kernel after writes vs apply(lowers + export): {shown}"
            )),
        },
    }
}

/// Runs the property for `opts.cases` stacks; shrinks a failure.
pub fn run(scratch: &mut Scratch, opts: &PropOptions, progress: impl Fn(u64)) -> PropReport {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&opts.seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let config = Config {
        cases: opts.cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let scratch = RefCell::new(scratch);
    let count = RefCell::new(0u64);
    let tally = RefCell::new((0u64, std::collections::BTreeMap::new()));
    let materialised = RefCell::new((0u64, 0u64));
    // Stacks that passed before the first failure (shrinking re-runs excluded).
    let passed = RefCell::new(0u32);
    let failing = RefCell::new(false);
    let convert = opts.marks.convert_options(opts.read);
    let start = Instant::now();
    let xattrs = if scratch.borrow().user_xattrs() {
        strategy::XattrNamespace::User
    } else {
        strategy::XattrNamespace::Trusted
    };
    let cross_layer = RefCell::new(0u64);
    let tally_check =
        |stack: &[Vec<TarEntry>], checked: Result<Checked, String>| -> Result<(), TestCaseError> {
            let checked = checked.map_err(|e| {
                *failing.borrow_mut() = true;
                TestCaseError::fail(e)
            })?;
            if !*failing.borrow() {
                *passed.borrow_mut() += 1;
            }
            let mut t = tally.borrow_mut();
            if matches!(checked, Checked::Mounted | Checked::Written(_))
                && strategy::has_cross_layer_link(stack)
            {
                *cross_layer.borrow_mut() += 1;
            }
            match checked {
                Checked::Mounted => t.0 += 1,
                Checked::Written(summary) => {
                    t.0 += 1;
                    let mut m = materialised.borrow_mut();
                    m.0 += summary.redirected_dirs;
                    m.1 += summary.metacopy_files;
                }
                Checked::Refused(rule) => *t.1.entry(rule).or_insert(0) += 1,
                Checked::Applied => {}
            }
            Ok(())
        };
    let stacks = strategy::stack(opts.max_layers, xattrs);
    // The damage of the minimal failing stack of a damaged run.
    let mut damaged = Vec::new();
    let (result, write_ops) = match opts.kind {
        PropKind::Write | PropKind::WriteRedirect => {
            let redirect = opts.kind == PropKind::WriteRedirect;
            let r = runner.run(&(stacks, crate::write::ops(redirect)), |(stack, ops)| {
                *count.borrow_mut() += 1;
                progress(*count.borrow());
                tally_check(
                    &stack,
                    check_write(&mut scratch.borrow_mut(), &stack, &ops, convert, redirect),
                )
            });
            match r {
                Ok(()) => (Ok(()), None),
                Err(TestError::Fail(reason, (stack, ops))) => (
                    Err(TestError::Fail(reason, stack)),
                    Some(format!("{ops:?}")),
                ),
                Err(TestError::Abort(reason)) => (Err(TestError::Abort(reason)), None),
            }
        }
        PropKind::Damaged => {
            let r = runner.run(&(stacks, damage::damage()), |(stack, damage)| {
                *count.borrow_mut() += 1;
                progress(*count.borrow());
                let checked = check_damaged(
                    &mut scratch.borrow_mut(),
                    &stack,
                    damage,
                    convert,
                    opts.kernel,
                );
                tally_check(&stack, checked.map(|(c, _)| c))
            });
            match r {
                Ok(()) => (Ok(()), None),
                Err(TestError::Fail(reason, (stack, damage))) => {
                    damaged = damage_of(&stack, damage);
                    (Err(TestError::Fail(reason, stack)), None)
                }
                Err(TestError::Abort(reason)) => (Err(TestError::Abort(reason)), None),
            }
        }
        _ => (
            runner.run(&stacks, |stack| {
                *count.borrow_mut() += 1;
                progress(*count.borrow());
                tally_check(
                    &stack,
                    check_stack(
                        &mut scratch.borrow_mut(),
                        &stack,
                        convert,
                        opts.kernel,
                        opts.kind,
                    ),
                )
            }),
            None,
        ),
    };
    let seconds = start.elapsed().as_secs_f64();
    let (failed, failure, minimal) = match result {
        Ok(()) => (0, None, None),
        Err(TestError::Fail(reason, value)) => {
            let reason = match &write_ops {
                Some(ops) => format!("{reason}\nwrites: {ops}"),
                None => reason.to_string(),
            };
            (1, Some(reason), Some(value))
        }
        Err(TestError::Abort(reason)) => (1, Some(format!("aborted: {reason}")), None),
    };
    let checked = *count.borrow() as u32;
    let (mounted, refused) = tally.borrow().clone();
    let (renamed_dirs, metacopy_files) = *materialised.borrow();
    let passed_count = *passed.borrow();
    let cross_layer_links = *cross_layer.borrow();
    PropReport {
        cases: opts.cases,
        passed: passed_count,
        failed,
        kernel: opts.kernel && scratch.borrow().can_mount(),
        mounted,
        refused,
        renamed_dirs,
        metacopy_files,
        cross_layer_links,
        seconds,
        stacks_per_second: checked as f64 / seconds.max(1e-9),
        seed: opts.seed,
        failure,
        minimal,
        damaged,
    }
}

/// The transforms `damage` makes to `stack`'s layers (none if they cannot be built).
fn damage_of(stack: &[Vec<TarEntry>], damage: damage::Damage) -> Vec<Transform> {
    let layer = damage.layer(stack.len());
    build_tar(&stack[layer])
        .and_then(|tar| damage.transforms(layer, &tar))
        .unwrap_or_default()
}

/// A shrunk failing stack as a case file, with the damage done to it; the
/// expected outcome is the model's (of a damaged stack: see
/// [`damage::expected`]).
pub fn as_case(stack: &[Vec<TarEntry>], damaged: &[Transform], failure: &str, seed: u64) -> Case {
    let expect = match (damaged.first(), model::run(stack)) {
        (Some(t), _) => Expect::Error(damage::expected(stack, t.layer)),
        (None, Ok(view)) => Expect::View(view),
        (None, Err(e)) => Expect::Error(e),
    };
    Case {
        why: format!("Found by `overlayer prop --seed {seed}`: {failure}"),
        requires: vec![],
        layers: stack.to_vec(),
        transform: damaged.to_vec(),
        options: Default::default(),
        export: None,
        accept: vec![],
        expect,
    }
}

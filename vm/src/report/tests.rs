use super::*;
use rstest::rstest;

#[rstest]
#[case("@@OVERLAYER@@ boot {\"uptime\":2.05}", Some(("boot", "{\"uptime\":2.05}")))]
#[case("@@OVERLAYER@@ done {}\r", Some(("done", "{}")))]
#[case("@@OVERLAYER@@ done\r\n", Some(("done", "")))]
#[case("[    3.1] overlayfs: x@@OVERLAYER@@ log prop: oops", Some(("log", "prop: oops")))]
#[case("@@OVERLAYER@@  boot {}", None)]
#[case("@@OVERLAYER@@bootx", None)]
#[case("@@OVERLAYER@@ b\"ad {}", None)]
#[case("plain console line", None)]
fn frames(#[case] line: &str, #[case] want: Option<(&str, &str)>) {
    let got = parse_frame(line);
    assert_eq!(
        got.as_ref().map(|f| (f.kind.as_str(), f.payload.as_str())),
        want
    );
}

fn collect(lines: &[&str]) -> Collector {
    let mut c = Collector::default();
    for l in lines {
        c.push(&parse_frame(l).expect(l));
    }
    c
}

fn ctx() -> RowContext {
    RowContext {
        name: "6.1".into(),
        accel: "tcg".into(),
        total_seconds: 40.0,
        ..Default::default()
    }
}

const STEPS: [&str; 4] = ["probe", "replay", "prop", "roundtrip"];

fn good_run() -> Vec<&'static str> {
    vec![
        r#"@@OVERLAYER@@ boot {"uptime":2.05,"kernel":"6.1.0-30-amd64"}"#,
        r#"@@OVERLAYER@@ insmod {"module":"00-overlay","ok":true}"#,
        r#"@@OVERLAYER@@ overlay {"available":true}"#,
        r#"@@OVERLAYER@@ probe {"kernel":"6.1.0-30-amd64","overlay":true,"userxattr":true,"xwhiteouts":false,"lowerdir_plus":true}"#,
        r#"@@OVERLAYER@@ exit {"step":"probe","rc":0,"seconds":0.1}"#,
        r#"@@OVERLAYER@@ replay {"total":3,"passed":2,"failed":0,"skipped":1,"cases":[{"name":"a","apply":"pass","kernel":"pass","detail":"","ms":1.0}]}"#,
        r#"@@OVERLAYER@@ exit {"step":"replay","rc":0,"seconds":1.5}"#,
        r#"@@OVERLAYER@@ prop {"cases":300,"passed":300,"failed":0,"seconds":12.0,"stacks_per_second":25.0,"seed":7}"#,
        r#"@@OVERLAYER@@ exit {"step":"prop","rc":0,"seconds":12.1}"#,
        r#"@@OVERLAYER@@ roundtrip {"cases":200,"passed":200,"failed":0,"kernel":true,"mounted":70,"refused":{"parent-not-directory":88},"seconds":2.5,"stacks_per_second":80.0,"seed":7}"#,
        r#"@@OVERLAYER@@ exit {"step":"roundtrip","rc":0,"seconds":2.6}"#,
        r#"@@OVERLAYER@@ done {"uptime":20.0}"#,
    ]
}

/// Index of the first line of `good_run()` that starts with `prefix`.
fn at(lines: &[&str], prefix: &str) -> usize {
    lines
        .iter()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix}"))
}

#[test]
fn complete_run_passes() {
    let row = collect(&good_run()).into_row(ctx(), &STEPS, None);
    assert_eq!(row.status, Status::Pass, "{:?}", row.problems);
    assert_eq!(row.kernel, "6.1.0-30-amd64");
    assert_eq!(row.features, ["userxattr", "lowerdir+"]);
    assert_eq!(row.boot_seconds, Some(2.05));
    assert_eq!(row.prop.as_ref().unwrap().passed, 300);
    let rt = row.roundtrip.as_ref().unwrap();
    assert_eq!(
        (rt.passed, rt.kernel, rt.mounted),
        (200, Some(true), Some(70))
    );
    assert!(row.notes.is_empty(), "{:?}", row.notes);
}

#[rstest]
#[case("prop", "@@OVERLAYER@@ prop ", r#"@@OVERLAYER@@ prop {"cases":300,"passed":41,"failed":1,"seconds":1.0,"stacks_per_second":42.0,"seed":7,"failure":"model vs kernel: a: mode 0644 != 0755"}"#)]
#[case("roundtrip", "@@OVERLAYER@@ roundtrip ", r#"@@OVERLAYER@@ roundtrip {"cases":200,"passed":12,"failed":1,"kernel":true,"mounted":5,"seconds":1.0,"stacks_per_second":13.0,"seed":7,"failure":"model vs roundtrip: d/.wh.x: missing"}"#)]
fn stack_failures_are_reported(#[case] step: &str, #[case] prefix: &str, #[case] line: &str) {
    let mut lines = good_run();
    let i = at(&lines, prefix);
    lines[i] = line;
    lines[i + 1] = if step == "prop" {
        r#"@@OVERLAYER@@ exit {"step":"prop","rc":1,"seconds":1.0}"#
    } else {
        r#"@@OVERLAYER@@ exit {"step":"roundtrip","rc":1,"seconds":1.0}"#
    };
    lines.insert(i + 1, "@@OVERLAYER@@ log STEP: minimal failing stack:");
    let row = collect(&lines).into_row(ctx(), &STEPS, None);
    assert_eq!(row.status, Status::Fail);
    let all = row.problems.join("\n");
    assert!(
        all.contains(&format!("{step} exited with status 1")),
        "{all}"
    );
    let want = match step {
        "prop" => "prop: stack 42 of 300 failed (seed 7): model vs kernel: a: mode",
        _ => "roundtrip: stack 13 of 200 failed (seed 7): model vs roundtrip: d/.wh.x",
    };
    assert!(all.contains(want), "{all}");
    assert_eq!(row.problems.len(), 2, "{all}");
    let d = format_details(&[row]);
    assert!(d.contains("  log: STEP: minimal failing stack:"), "{d}");
}

#[test]
fn unchecked_kernel_side_is_noted() {
    let mut lines = good_run();
    let i = at(&lines, "@@OVERLAYER@@ roundtrip ");
    lines[i] = r#"@@OVERLAYER@@ roundtrip {"cases":200,"passed":200,"failed":0,"kernel":false,"mounted":0,"seconds":0.5,"stacks_per_second":400.0,"seed":7}"#;
    let row = collect(&lines).into_row(ctx(), &STEPS, None);
    assert_eq!(row.status, Status::Pass, "{:?}", row.problems);
    assert_eq!(row.notes.len(), 1);
    assert!(
        row.notes[0].starts_with("roundtrip: could not mount"),
        "{:?}",
        row.notes
    );
}

#[test]
fn missing_roundtrip_result_fails() {
    let mut lines = good_run();
    lines.remove(at(&lines, "@@OVERLAYER@@ roundtrip "));
    let row = collect(&lines).into_row(ctx(), &STEPS, None);
    assert_eq!(row.status, Status::Fail);
    assert_eq!(row.problems, ["roundtrip wrote no JSON result"]);
    // Not asked for: not expected.
    let mut lines = good_run();
    lines.truncate(at(&lines, "@@OVERLAYER@@ roundtrip "));
    lines.push(r#"@@OVERLAYER@@ done {}"#);
    let row = collect(&lines).into_row(ctx(), &STEPS[..3], None);
    assert_eq!(row.status, Status::Pass, "{:?}", row.problems);
    assert!(row.roundtrip.is_none());
}

#[test]
fn failing_stack_section() {
    let out = "200 stacks, seed 1, kernel checked: 1 failed\nrefusals by rule: x 1\n\
               minimal failing stack:\nmodel vs roundtrip: a\n{\n  \"layers\": []\n}\n";
    assert_eq!(
        failing_stack(out),
        [
            "minimal failing stack:",
            "model vs roundtrip: a",
            "{",
            "  \"layers\": []",
            "}"
        ]
    );
    assert!(failing_stack("3 stacks, seed 1: 0 failed\n").is_empty());
    let long = format!("minimal failing stack:\n{}", "x\n".repeat(500));
    assert_eq!(failing_stack(&long).len(), 300);
}

#[test]
fn failures_are_reported() {
    let mut lines = good_run();
    lines[5] = r#"@@OVERLAYER@@ replay {"total":3,"passed":1,"failed":2,"skipped":0,"cases":[{"name":"whiteout-dir","apply":"pass","kernel":"fail","detail":"differs","ms":1.0},{"name":"opaque","apply":{"verdict":"fail","detail":"mode 0700 != 0755"},"kernel":{"verdict":"skip","detail":"no xattr"},"ms":2.0},{"name":"ok","apply":{"verdict":"pass"},"kernel":"pass","ms":2.0}]}"#;
    lines[6] = r#"@@OVERLAYER@@ exit {"step":"replay","rc":1,"seconds":1.5}"#;
    let row = collect(&lines).into_row(ctx(), &STEPS, None);
    assert_eq!(row.status, Status::Fail);
    let all = row.problems.join("\n");
    assert!(all.contains("replay exited with status 1"), "{all}");
    assert!(all.contains("whiteout-dir (differs)"), "{all}");
    assert!(all.contains("opaque (apply: mode 0700 != 0755)"), "{all}");
    assert_eq!(row.replay.unwrap().cases.len(), 2);
}

#[test]
fn missing_steps_and_timeouts_fail() {
    let row =
        collect(&good_run()[..4]).into_row(ctx(), &STEPS, Some("timed out after 60 s".into()));
    assert_eq!(row.status, Status::Fail);
    let all = row.problems.join("\n");
    assert!(all.contains("timed out"), "{all}");
    assert!(all.contains("probe did not finish"), "{all}");
    assert!(all.contains("prop did not finish"), "{all}");
    assert!(all.contains("roundtrip did not finish"), "{all}");
}

#[test]
fn skip_is_not_failure() {
    let mut lines = good_run();
    lines.truncate(at(&lines, "@@OVERLAYER@@ prop "));
    lines.push(r#"@@OVERLAYER@@ skip {"step":"prop","reason":"no overlay"}"#);
    lines.push(r#"@@OVERLAYER@@ skip {"step":"roundtrip","reason":"no overlay"}"#);
    lines.push(r#"@@OVERLAYER@@ done {}"#);
    let row = collect(&lines).into_row(ctx(), &STEPS, None);
    assert_eq!(row.status, Status::Skip, "{:?}", row.problems);
    assert_eq!(
        row.notes,
        ["prop skipped: no overlay", "roundtrip skipped: no overlay"]
    );
    let t = format_table(&[row]);
    let (head, line) = (t.lines().next().unwrap(), t.lines().nth(1).unwrap());
    for col in ["STACKS", "ROUNDTRIP"] {
        let at = head.find(col).unwrap();
        assert!(line[at..].starts_with("- "), "{col}: {t}");
    }
    assert!(line.ends_with("skip"), "{t}");
}

#[test]
fn bad_json_is_a_problem() {
    let mut lines = good_run();
    lines[3] = "@@OVERLAYER@@ probe {not json";
    let row = collect(&lines).into_row(ctx(), &STEPS, None);
    assert_eq!(row.status, Status::Fail);
    assert!(row.problems.iter().any(|p| p.contains("not valid JSON")));
}

#[test]
fn console_excerpt_keeps_panic_line() {
    let mut lines: Vec<String> = vec!["[ 1.0] Kernel panic - not syncing: sysrq".into()];
    lines.extend((0..40).map(|i| format!("line {i}")));
    let ex = console_excerpt(&lines, 30);
    assert_eq!(ex.len(), 32);
    assert!(ex[0].contains("Kernel panic"));
    assert_eq!(ex[1], "...");
    assert_eq!(ex[31], "line 39");
    let short: Vec<String> = vec!["a".into(), "b".into()];
    assert_eq!(console_excerpt(&short, 30), short);
}

#[test]
fn table_is_aligned() {
    let mut a = collect(&good_run()).into_row(ctx(), &STEPS, None);
    a.boot_host_seconds = Some(5.0);
    let b = Row::failed("6.12", "tcg", "boom".into());
    let t = format_table(&[a, b]);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("KERNEL"));
    let col = lines[0].find("ACCEL").unwrap();
    assert_eq!(&lines[1][col..col + 3], "tcg");
    assert_eq!(&lines[2][col..col + 3], "tcg");
    assert!(lines[1].contains("6.1.0-30-amd64 (6.1)"));
    assert!(lines[1].contains("2/0/1"));
    let stacks = lines[0].find("STACKS").unwrap();
    let roundtrip = lines[0].find("ROUNDTRIP").unwrap();
    assert!(stacks < roundtrip, "{t}");
    assert!(lines[1][stacks..].starts_with("300 (25/s)"), "{t}");
    assert!(lines[1][roundtrip..].starts_with("200 (80/s)"), "{t}");
    assert!(lines[2][roundtrip..].starts_with('-'), "{t}");
    assert!(lines[1].contains("2.0s  5.0s  40.0s"), "{t}");
    assert!(lines[1].ends_with("ok"));
    assert!(lines[2].ends_with("FAIL"));
    let d = format_details(&[Row::failed("6.12", "tcg", "boom".into())]);
    assert!(d.contains("FAIL: boom"));
}

/// 5.10 probes none of the three features: the row and the progress line
/// name each with the release that brought it, and the replay's skips are
/// counted by their reason.
#[test]
fn a_kernel_without_features_says_what_it_lacks_and_why_cases_skip() {
    let mut lines = good_run();
    let probe = r#"@@OVERLAYER@@ probe {"kernel":"5.10.0-46-amd64","overlay":true,"userxattr":false,"xwhiteouts":false,"lowerdir_plus":false}"#;
    let replay = r#"@@OVERLAYER@@ replay {"total":4,"passed":1,"failed":0,"skipped":3,"cases":[{"name":"a","apply":"pass","kernel":"pass","ms":1.0},{"name":"u1","apply":"pass","kernel":{"verdict":"skip","detail":"no user xattrs"},"ms":1.0},{"name":"u2","apply":"pass","kernel":{"verdict":"skip","detail":"no user xattrs"},"ms":1.0},{"name":"x","apply":{"verdict":"skip","detail":"needs x"},"kernel":{"verdict":"skip","detail":"needs x"},"ms":1.0}]}"#;
    let (p, r) = (
        at(&lines, "@@OVERLAYER@@ probe"),
        at(&lines, "@@OVERLAYER@@ replay"),
    );
    lines[p] = probe;
    lines[r] = replay;
    let mut c = Collector::default();
    let mut said = Vec::new();
    for l in &lines {
        said.extend(c.push(&parse_frame(l).unwrap()));
    }
    assert!(
        said.contains(
            &"probe: overlay=true features: -; lacks: userxattr (5.11), xwhiteouts (6.7), lowerdir+ (6.8)"
                .to_string()
        ),
        "{said:?}"
    );
    let row = c.into_row(ctx(), &STEPS, None);
    assert!(row.features.is_empty());
    assert_eq!(
        row.lacks,
        ["userxattr (5.11)", "xwhiteouts (6.7)", "lowerdir+ (6.8)"]
    );
    assert_eq!(
        row.skip_reasons.into_iter().collect::<Vec<_>>(),
        [
            ("needs x".to_string(), 1),
            ("no user xattrs".to_string(), 2)
        ]
    );
}

#[test]
fn a_kernel_without_overlay_lacks_nothing_it_could_probe() {
    let v: serde_json::Value =
        serde_json::from_str(r#"{"overlay":false,"userxattr":false}"#).unwrap();
    assert!(super::collector::probe_lacks(&v).is_empty());
}

//! The host kernel as the last row: the same steps run natively, turned into
//! the same frames the guest would send.

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::qemu::GuestOptions;
use crate::report::{failing_stack, Collector, Frame, Row, RowContext};

struct StepRun {
    rc: i64,
    stdout: String,
    stderr: String,
    seconds: f64,
}

fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> std::io::Result<StepRun> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let o = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            timed_out = true;
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = e.join().unwrap_or_default();
    if timed_out {
        stderr.push_str(&format!("\ntimed out after {} s", timeout.as_secs()));
    }
    Ok(StepRun {
        rc: if timed_out {
            124
        } else {
            status.code().unwrap_or(128).into()
        },
        stdout: o.join().unwrap_or_default(),
        stderr,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn frame(kind: &str, payload: impl Into<String>) -> Frame {
    Frame {
        kind: kind.to_string(),
        payload: payload.into(),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The overlayer arguments of a step (`None` for an unknown step); `json` is
/// where the step writes its result (probe prints it instead).
pub fn step_args(
    step: &str,
    cases: &Path,
    opts: &GuestOptions,
    json: &Path,
) -> Option<Vec<OsString>> {
    let prop = |mode: &str, n: u64| -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["prop".into()];
        if mode != "convert" {
            a.extend(["--mode".into(), mode.into()]);
        }
        a.extend([
            "--cases".into(),
            n.to_string().into(),
            "--seed".into(),
            opts.seed.to_string().into(),
            "--json".into(),
            json.into(),
        ]);
        a
    };
    Some(match step {
        "probe" => vec!["probe".into(), "--json".into()],
        "replay" => vec!["replay".into(), cases.into(), "--json".into(), json.into()],
        "prop" => prop("convert", opts.prop_cases),
        "roundtrip" | "write" | "write-redirect" => prop(step, opts.roundtrip_cases),
        _ => return None,
    })
}

/// Run the steps (probe, replay, prop, roundtrip, write, write-redirect)
/// with the host kernel.
pub fn run(
    overlayer: &Path,
    cases: &Path,
    opts: &GuestOptions,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Row {
    let start = Instant::now();
    let mut c = Collector::default();
    let mut notes = Vec::new();
    if !is_root() {
        notes.push("not running as root: kernel mounts will fail".to_string());
    }
    let tmp = match tempfile::Builder::new().prefix("overlayer-host-").tempdir() {
        Ok(t) => t,
        Err(e) => return Row::failed("host", "native", format!("temp dir: {e}")),
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .ok();
    let push = |c: &mut Collector, f: Frame, progress: &mut dyn FnMut(&str)| {
        if let Some(m) = c.push(&f) {
            progress(&m);
        }
    };
    for step in &opts.steps {
        let json = tmp.path().join(format!("{step}.json"));
        let Some(args) = step_args(step, cases, opts, &json) else {
            push(
                &mut c,
                frame("log", format!("unknown step {step}")),
                progress,
            );
            continue;
        };
        let mut cmd = Command::new(overlayer);
        cmd.args(args);
        progress(&format!("running {step}"));
        let r = match run_with_timeout(&mut cmd, timeout.saturating_sub(start.elapsed())) {
            Ok(r) => r,
            Err(e) => StepRun {
                rc: 127,
                stdout: String::new(),
                stderr: format!("cannot run {}: {e}", overlayer.display()),
                seconds: 0.0,
            },
        };
        let result = if step == "probe" {
            r.stdout.clone()
        } else {
            std::fs::read_to_string(&json).unwrap_or_default()
        };
        if !result.trim().is_empty() {
            push(&mut c, frame(step, result.replace('\n', " ")), progress);
        }
        if r.rc != 0 {
            if step != "probe" {
                for l in failing_stack(&r.stdout) {
                    push(&mut c, frame("log", format!("{step}: {l}")), progress);
                }
            }
            let lines: Vec<&str> = r.stderr.lines().collect();
            for l in &lines[lines.len().saturating_sub(25)..] {
                push(&mut c, frame("log", format!("{step}: {l}")), progress);
            }
        }
        push(
            &mut c,
            frame(
                "exit",
                serde_json::json!({"step": step, "rc": r.rc, "seconds": r.seconds}).to_string(),
            ),
            progress,
        );
    }
    c.done = true;
    let steps: Vec<&str> = opts.steps.iter().map(String::as_str).collect();
    c.into_row(
        RowContext {
            name: "host".into(),
            package: None,
            release,
            accel: "native".into(),
            boot_host_seconds: None,
            total_seconds: start.elapsed().as_secs_f64(),
            notes,
        },
        &steps,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn opts() -> GuestOptions {
        GuestOptions {
            prop_cases: 300,
            roundtrip_cases: 200,
            seed: 7,
            shell: false,
            steps: Vec::new(),
        }
    }

    #[rstest]
    #[case("probe", Some("probe --json"))]
    #[case("replay", Some("replay /c --json /t/j"))]
    #[case("prop", Some("prop --cases 300 --seed 7 --json /t/j"))]
    #[case(
        "roundtrip",
        Some("prop --mode roundtrip --cases 200 --seed 7 --json /t/j")
    )]
    #[case("nope", None)]
    fn args_of_steps(#[case] step: &str, #[case] want: Option<&str>) {
        let got = step_args(step, Path::new("/c"), &opts(), Path::new("/t/j")).map(|a| {
            a.iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        });
        assert_eq!(got.as_deref(), want);
    }
}

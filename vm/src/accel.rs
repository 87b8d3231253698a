//! Choosing between KVM and TCG.
//!
//! `/dev/kvm` alone is not enough: on hosts where it is backed by `kvm_pvm`
//! (no vmx/svm in /proc/cpuinfo) only PVM-built guests run, and a Debian
//! kernel hangs silently. So KVM is used only with a vmx/svm flag (or when
//! forced), and the runner still falls back to TCG when a KVM boot prints
//! nothing within a few seconds.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::str::FromStr;

use anyhow::bail;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the user asked for (`VM_ACCEL` / `--accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => AccelChoice::Auto,
            "kvm" => AccelChoice::Kvm,
            "tcg" => AccelChoice::Tcg,
            other => bail!("unknown accelerator {other:?} (want auto, kvm or tcg)"),
        })
    }
}

/// True if any `flags` line of /proc/cpuinfo has `vmx` or `svm`.
pub fn cpu_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The decision: which accelerator to try first, and why (printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub accel: Accel,
    pub reason: String,
}

/// Pure decision from the request, /proc/cpuinfo, whether /dev/kvm can be
/// opened read-write (`Err` = why not), and whether kvm_pvm is loaded.
pub fn decide(
    choice: AccelChoice,
    cpuinfo: &str,
    kvm_dev: Result<(), String>,
    pvm: bool,
) -> Decision {
    let tcg = |reason: String| Decision {
        accel: Accel::Tcg,
        reason,
    };
    match choice {
        AccelChoice::Tcg => tcg("TCG requested (VM_ACCEL=tcg)".into()),
        AccelChoice::Kvm => match kvm_dev {
            Ok(()) => Decision {
                accel: Accel::Kvm,
                reason: "KVM requested (VM_ACCEL=kvm); falls back to TCG if the guest stays silent"
                    .into(),
            },
            Err(e) => tcg(format!(
                "KVM requested but /dev/kvm is unusable ({e}); using TCG"
            )),
        },
        AccelChoice::Auto => {
            if let Err(e) = kvm_dev {
                return tcg(format!("skipping KVM: /dev/kvm is unusable ({e})"));
            }
            if !cpu_has_virt(cpuinfo) {
                let why = if pvm {
                    " (/dev/kvm is kvm_pvm, which only runs PVM guests; Debian kernels hang under it)"
                } else {
                    ""
                };
                return tcg(format!(
                    "skipping KVM: no vmx/svm flag in /proc/cpuinfo{why}"
                ));
            }
            Decision {
                accel: Accel::Kvm,
                reason: "vmx/svm present and /dev/kvm usable".into(),
            }
        }
    }
}

/// Look at this host and decide.
pub fn detect(choice: AccelChoice) -> Decision {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm_dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| e.to_string());
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    decide(choice, &cpuinfo, kvm_dev, pvm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const VMX: &str = "processor\t: 0\nflags\t\t: fpu vme vmx sse\n";
    const SVM: &str = "flags\t\t: fpu svm\n";
    const NONE: &str = "flags\t\t: fpu vme hypervisor sse4_2 avx2\nvmx flags\t: x\n";

    #[rstest]
    #[case(VMX, true)]
    #[case(SVM, true)]
    #[case(NONE, false)]
    #[case("", false)]
    fn virt_flags(#[case] cpuinfo: &str, #[case] want: bool) {
        assert_eq!(cpu_has_virt(cpuinfo), want);
    }

    #[rstest]
    #[case(AccelChoice::Auto, VMX, true, false, Accel::Kvm)]
    #[case(AccelChoice::Auto, NONE, true, true, Accel::Tcg)]
    #[case(AccelChoice::Auto, VMX, false, false, Accel::Tcg)]
    #[case(AccelChoice::Kvm, NONE, true, true, Accel::Kvm)]
    #[case(AccelChoice::Kvm, VMX, false, false, Accel::Tcg)]
    #[case(AccelChoice::Tcg, VMX, true, false, Accel::Tcg)]
    fn decisions(
        #[case] choice: AccelChoice,
        #[case] cpuinfo: &str,
        #[case] dev_ok: bool,
        #[case] pvm: bool,
        #[case] want: Accel,
    ) {
        let dev = if dev_ok {
            Ok(())
        } else {
            Err("EACCES".to_string())
        };
        let d = decide(choice, cpuinfo, dev, pvm);
        assert_eq!(d.accel, want, "{}", d.reason);
        assert!(!d.reason.is_empty());
    }

    #[test]
    fn pvm_reason_is_explained() {
        let d = decide(AccelChoice::Auto, NONE, Ok(()), true);
        assert!(d.reason.contains("kvm_pvm"), "{}", d.reason);
    }

    #[rstest]
    #[case("auto", AccelChoice::Auto)]
    #[case("", AccelChoice::Auto)]
    #[case("KVM", AccelChoice::Kvm)]
    #[case("tcg", AccelChoice::Tcg)]
    fn parse_choice(#[case] s: &str, #[case] want: AccelChoice) {
        assert_eq!(s.parse::<AccelChoice>().unwrap(), want);
    }

    #[test]
    fn bad_choice() {
        assert!("hvf".parse::<AccelChoice>().is_err());
    }
}

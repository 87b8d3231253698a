//! The jail every input runs in.
//!
//! A worker thread unshares its mount namespace and filesystem context
//! (`overlayer::sys::unshare_mount_namespace`), mounts a tmpfs, binds
//! libFuzzer's artifact directory into it at the same path (so a crash file
//! can still be written if the worker itself dies; the working directory
//! keeps its path too, for a relative prefix) and chroots into it. It then
//! holds:
//!
//! ```text
//! /etc/passwd  /victim/file  /run/  /tmp/    sentinels (never written)
//! /out/w/                                    the output directory of one input
//! ```
//!
//! Every input gets a fresh, empty `/out/w`; afterwards `/out` must hold
//! nothing but `w` and every sentinel must be unchanged (type, mode, owner,
//! size, mtime, ctime, content), else the input is a crash: a write outside
//! the output directory. Absolute symlink targets planted by a layer (`/etc`,
//! `/victim`, `/run`) name the sentinels, so an escape through them is seen.
//!
//! Two ways to run it (`OVERLAYER_FUZZ_JAIL`):
//! * `thread` (default): one long-lived worker thread, set up once; inputs
//!   are sent over a channel. Sound because each input starts from an empty
//!   `/out/w` and the sentinels are checked after each one.
//! * `input`: a new thread, namespace, tmpfs and chroot per input (nothing at
//!   all survives an input); slower, see `fuzz/README.md` for the figures.
//!
//! A panic in the worker is caught, the worker survives, and the panic is
//! raised again on libFuzzer's thread, so the crash file is written by the
//! usual path. The global panic hook installed by libfuzzer-sys aborts on
//! any panic; [`install_hook`] keeps that for every thread but the worker.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};

const WORKER: &str = "overlayer-jail";
/// Mount point of the jail's tmpfs on the host: an empty directory there,
/// shared by every fuzzing process (each mounts over it in its own namespace).
const MOUNT_POINT: &str = "overlayer-fuzz-jail";
/// The output directory of one input, inside the jail.
pub const OUT: &str = "/out/w";

type Job = Box<dyn FnOnce() + Send>;

/// What a sentinel looked like: type and mode, owner, size, mtime, ctime, content.
type Snapshot = BTreeMap<PathBuf, (u32, u32, u32, u64, i64, i64, i64, i64, Vec<u8>)>;

struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
}

static WORKER_THREAD: OnceLock<Worker> = OnceLock::new();
static HOOK: Once = Once::new();

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Thread,
    Input,
}

fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("OVERLAYER_FUZZ_JAIL").as_deref() {
        Ok("input") => Mode::Input,
        Ok("thread") | Err(_) => Mode::Thread,
        Ok(other) => panic!("OVERLAYER_FUZZ_JAIL={other}: use `thread` or `input`"),
    })
}

/// Runs `work` in the jail with a fresh, empty output directory ([`OUT`]).
/// A panic in `work`, or a write outside the output directory, panics here
/// (on the caller's thread).
pub fn run<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce(&Path) -> T + Send + 'static,
{
    install_hook();
    let outcome = match mode() {
        Mode::Thread => run_on_worker(work),
        Mode::Input => run_on_fresh_thread(work),
    };
    match outcome {
        Ok(value) => value,
        Err(message) => panic!("{message}"),
    }
}

/// Keeps libfuzzer-sys's abort-on-panic hook for every thread but the
/// worker, whose panics are caught and raised again on the caller's thread.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(WORKER) {
                eprintln!("panic in the jail: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

fn run_on_worker<T, F>(work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(&Path) -> T + Send + 'static,
{
    let worker = WORKER_THREAD.get_or_init(spawn_worker);
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| one_input(work)));
        let _ = tx.send(result.map_err(panic_message));
    });
    worker
        .jobs
        .lock()
        .expect("jail sender")
        .send(job)
        .map_err(|_| "the jail worker is gone".to_string())?;
    rx.recv()
        .map_err(|_| "the jail worker died during an input".to_string())?
}

fn spawn_worker() -> Worker {
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
    std::thread::Builder::new()
        .name(WORKER.into())
        .spawn(move || {
            let setup = std::panic::catch_unwind(setup).map_err(panic_message);
            let ok = setup.is_ok();
            let _ = ready_tx.send(setup);
            if ok {
                for job in rx {
                    job();
                }
            }
        })
        .expect("spawn the jail worker");
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("jail setup failed (needs root): {e}"),
        Err(_) => panic!("jail setup died"),
    }
    Worker {
        jobs: Mutex::new(tx),
    }
}

fn run_on_fresh_thread<T, F>(work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(&Path) -> T + Send + 'static,
{
    let handle = std::thread::Builder::new()
        .name(WORKER.into())
        .spawn(move || {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                setup();
                one_input(work)
            }))
            .map_err(panic_message)
        })
        .expect("spawn a jail thread");
    handle
        .join()
        .map_err(|_| "the jail thread died".to_string())?
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}

/// The sentinels right after setup, and the paths the snapshot skips.
type Baseline = Option<(Snapshot, Vec<PathBuf>)>;

/// The sentinels' state right after setup (set by `setup`, read after each input).
fn baseline() -> &'static Mutex<Baseline> {
    static BASELINE: OnceLock<Mutex<Baseline>> = OnceLock::new();
    BASELINE.get_or_init(|| Mutex::new(None))
}

/// Makes the calling thread a jail: private mounts, tmpfs root, sentinels.
fn setup() {
    overlayer::sys::unshare_mount_namespace().expect("unshare the mount namespace (needs root)");
    let dir = std::env::temp_dir().join(MOUNT_POINT);
    std::fs::create_dir_all(&dir).expect("create the jail mount point");
    overlayer::mount::mount_tmpfs(&dir).expect("mount the jail tmpfs");
    // libFuzzer writes crash files to -artifact_prefix from whichever thread
    // dies; bind its directory at the same path inside the jail.
    let mut skip = Vec::new();
    for arg in std::env::args() {
        let Some(prefix) = arg
            .strip_prefix("-artifact_prefix=")
            .or_else(|| arg.strip_prefix("-exact_artifact_path="))
        else {
            continue;
        };
        let host = if prefix.ends_with('/') {
            PathBuf::from(prefix)
        } else {
            Path::new(prefix)
                .parent()
                .unwrap_or(Path::new("/"))
                .to_path_buf()
        };
        let Ok(host) = std::path::absolute(&host) else {
            continue;
        };
        if !host.is_dir() || host == Path::new("/") {
            continue;
        }
        let inside = dir.join(host.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(&inside).expect("artifact mount point");
        rustix::mount::mount_bind(&host, &inside).expect("bind the artifact directory");
        skip.push(host);
    }
    // The working directory keeps its path inside the jail, so a relative
    // -artifact_prefix (what `cargo fuzz run` passes) names the bound
    // directory there too.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    rustix::process::chroot(&dir).expect("chroot into the jail");
    std::fs::create_dir_all(&cwd).expect("working directory inside the jail");
    std::env::set_current_dir(&cwd).expect("chdir inside the jail");
    for d in ["/etc", "/victim", "/run", "/tmp", "/out"] {
        std::fs::create_dir_all(d).expect("sentinel directory");
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::write("/etc/passwd", b"root:x:0:0:sentinel\n").expect("sentinel");
    std::fs::write("/victim/file", b"sentinel\n").expect("sentinel");
    std::fs::set_permissions("/tmp", std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let snap = snapshot(&skip);
    *baseline().lock().expect("baseline") = Some((snap, skip));
}

/// One input: a fresh `/out/w`, the work, the sentinel check, cleanup.
fn one_input<T>(work: impl FnOnce(&Path) -> T) -> T {
    let out = Path::new(OUT);
    if out.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(out).expect("remove a stale output directory");
    }
    std::fs::create_dir(out).expect("create the output directory");
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let value = work(out);
    check_outside(out);
    std::fs::remove_dir_all(out).expect("remove the output directory");
    value
}

/// Panics if anything outside the output directory changed.
fn check_outside(out: &Path) {
    let names: Vec<String> = std::fs::read_dir("/out")
        .expect("read /out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names == [out.file_name().unwrap().to_string_lossy()],
        "write outside the output directory: /out holds {names:?}"
    );
    let guard = baseline().lock().expect("baseline");
    let (before, skip) = guard.as_ref().expect("jail set up");
    let now = snapshot(skip);
    if &now != before {
        let mut changed = Vec::new();
        for (path, state) in &now {
            if before.get(path) != Some(state) {
                changed.push(format!("{} changed or appeared", path.display()));
            }
        }
        for path in before.keys() {
            if !now.contains_key(path) {
                changed.push(format!("{} disappeared", path.display()));
            }
        }
        panic!("write outside the output directory: {}", changed.join("; "));
    }
}

/// Everything in the jail but `/out` and the artifact directories.
fn snapshot(skip: &[PathBuf]) -> Snapshot {
    let mut snap = Snapshot::new();
    let mut todo = vec![PathBuf::from("/")];
    while let Some(dir) = todo.pop() {
        for item in std::fs::read_dir(&dir).expect("read a jail directory") {
            let path = item.expect("entry").path();
            // `/out` itself changes with every input; `check_outside` lists it.
            if path == Path::new("/out") || skip.contains(&path) {
                continue;
            }
            let meta = path.symlink_metadata().expect("lstat");
            let content = if meta.is_file() {
                std::fs::read(&path).expect("read a sentinel")
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            snap.insert(
                path.clone(),
                (
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.size(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.ctime(),
                    meta.ctime_nsec(),
                    content,
                ),
            );
            if meta.is_dir() {
                todo.push(path);
            }
        }
    }
    snap
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write to a sentinel is reported, and a clean input is not. Needs root.
    #[test]
    fn writes_outside_the_output_directory_are_caught() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let clean = std::panic::catch_unwind(|| {
            run(|out| std::fs::write(out.join("f"), b"inside").is_ok())
        });
        assert!(matches!(clean, Ok(true)));
        let sibling =
            std::panic::catch_unwind(|| run(|_| std::fs::write("/out/sibling", b"x").unwrap()));
        let message = panic_message(sibling.expect_err("a sibling of the output is a crash"));
        assert!(message.contains("/out holds"), "{message}");
        run(|_| std::fs::remove_file("/out/sibling").unwrap());
        let escape =
            std::panic::catch_unwind(|| run(|_| std::fs::write("/etc/passwd", b"pwned").unwrap()));
        let message = panic_message(escape.expect_err("a sentinel write is a crash"));
        assert!(message.contains("/etc/passwd"), "{message}");
    }
}

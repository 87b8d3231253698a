// Re-expand the one-test-per-case-file list when cases change.
fn main() {
    println!("cargo:rerun-if-changed=../cases");
}

fn main() -> std::process::ExitCode {
    overlayer_harness::cli::main()
}

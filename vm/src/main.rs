fn main() {
    eprintln!("overlayer-vm: the VM runner is not built yet");
    std::process::exit(2);
}

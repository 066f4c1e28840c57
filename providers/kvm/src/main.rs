fn main() -> std::process::ExitCode {
    cerana_kvm::main()
}

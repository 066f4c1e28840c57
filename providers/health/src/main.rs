fn main() -> std::process::ExitCode {
    cerana_health::main()
}

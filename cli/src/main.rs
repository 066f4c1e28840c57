fn main() -> std::process::ExitCode {
    cerana_cli::main()
}

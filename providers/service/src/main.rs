fn main() -> std::process::ExitCode {
    cerana_service::main()
}

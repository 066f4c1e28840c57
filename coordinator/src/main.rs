fn main() -> std::process::ExitCode {
    cerana_coordinator::command::main()
}

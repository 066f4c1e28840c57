fn main() -> std::process::ExitCode {
    cerana_bootserver::command::main()
}

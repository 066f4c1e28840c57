fn main() -> std::process::ExitCode {
    cerana_init_provider::main()
}

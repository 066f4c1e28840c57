fn main() -> std::process::ExitCode {
    cerana_kv::main()
}

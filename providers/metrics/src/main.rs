fn main() -> std::process::ExitCode {
    cerana_metrics::main()
}

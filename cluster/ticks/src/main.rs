fn main() -> std::process::ExitCode {
    cerana_ticks::main()
}

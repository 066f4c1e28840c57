fn main() -> std::process::ExitCode {
    cerana_clusterconf::main()
}

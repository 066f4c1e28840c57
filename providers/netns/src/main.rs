fn main() -> std::process::ExitCode {
    cerana_netns::main()
}

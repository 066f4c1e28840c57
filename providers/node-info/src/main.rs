fn main() -> std::process::ExitCode {
    cerana_node_info::main()
}

fn main() -> std::process::ExitCode {
    cerana_init_provider::provider(cerana_init_provider::init_socket_from_env()).main()
}

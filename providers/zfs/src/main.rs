fn main() -> std::process::ExitCode {
    cerana_zfs::main()
}

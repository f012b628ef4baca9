fn main() -> std::process::ExitCode {
    ameyo_scim::cli::main()
}

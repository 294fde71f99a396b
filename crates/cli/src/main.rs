//! The `gantry` binary: everything is in the library.

fn main() -> std::process::ExitCode {
    // Several TLS stacks could be linked in (rustls panics when it cannot pick one), so
    // the process-wide provider is chosen before anything uses TLS. `Err` only means one
    // was installed already, which is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    gantry_cli::main()
}

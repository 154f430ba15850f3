//! The `herd` command. Parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = herd::cli::Cli::parse();
    herd::cli::init_tracing(&cli);
    match herd::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("herd: {err:#}");
            ExitCode::from(2)
        }
    }
}

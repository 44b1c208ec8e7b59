//! `rayfine`: the command-line front of the library. The work is done in `cli`; this only parses,
//! runs, and turns an error into one line and an exit code (0 ok, 1 the environment raised, 2 any
//! other failure).

mod bench;
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::args::Cli::parse();
    let serving = matches!(cli.command, cli::args::Command::Serve(_));
    rayfine::server::init_logging(if serving { "info" } else { "warn,rayfine::env=info" }, serving);
    let result = cli::runtime().and_then(|runtime| runtime.block_on(cli::run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rayfine: error: {}", one_line(&err));
            ExitCode::from(cli::exit_code(&err))
        }
    }
}

/// The error and its causes on one line. A library error's own message is complete (it already
/// says what its cause said), so its causes are not repeated after it.
fn one_line(err: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in err.chain() {
        parts.push(cause.to_string());
        if cause.downcast_ref::<rayfine::Error>().is_some() {
            break;
        }
    }
    parts.join(": ")
}

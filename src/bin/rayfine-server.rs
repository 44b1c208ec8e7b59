//! `rayfine-server`: the in-container server alone, without the client and its dependencies, so
//! its static build stays small. `rayfine serve` runs the same code.

use std::process::ExitCode;

use clap::Parser;
use rayfine::server::{init_logging, serve, ServerConfig};

#[derive(Parser)]
#[command(name = "rayfine-server", version, about = "Serve an environment's env.py over HTTP (POST /call)")]
struct Cli {
    #[command(flatten)]
    config: ServerConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging("info", true);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rayfine-server: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(serve(cli.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rayfine-server: {err}");
            ExitCode::from(2)
        }
    }
}

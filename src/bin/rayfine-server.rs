//! `rayfine-server`: the in-container server alone, without the client and its dependencies, so
//! its static build stays small. `rayfine serve` runs the same code.

use std::process::ExitCode;

use clap::Parser;
use rayfine::server::{exit_on_panic, init_logging, serve, supervise, ServerConfig};

#[derive(Parser)]
#[command(name = "rayfine-server", version, about = "Serve an environment's env.py over HTTP (POST /call)")]
struct Cli {
    #[command(flatten)]
    config: ServerConfig,
    /// Instead of serving env.py, run COMMAND (an HTTP-based environment's server): stop it on
    /// SIGTERM or SIGINT, or when stdin ends if --exit-on-stdin-eof is set; pass SIGHUP, SIGQUIT,
    /// SIGUSR1, SIGUSR2 and SIGWINCH on to it.
    #[arg(long, requires = "command")]
    supervise: bool,
    /// The command to supervise, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The most runtime threads the server starts.
const MAX_THREADS: usize = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging("info", true);
    exit_on_panic();
    // A few threads serve one environment well; one per core of a large host would only use up a
    // container's pids limit.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rayfine-server: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    if cli.supervise {
        return match runtime.block_on(supervise(&cli.command, &cli.config)) {
            Ok(code) => ExitCode::from(code),
            Err(err) => {
                eprintln!("rayfine-server: {err}");
                ExitCode::from(2)
            }
        };
    }
    match runtime.block_on(serve(cli.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rayfine-server: {err}");
            ExitCode::from(2)
        }
    }
}

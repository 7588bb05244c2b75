//! `x402ctl`: operator commands and the load generator for an x402-cluster. Everything lives in
//! [`x402_client::ctl`]; this only parses the command line and maps the result to an exit code.

use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;
use x402_client::ctl::{self, Cli};

// The load generator must not be the bottleneck it measures.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match ctl::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("x402ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

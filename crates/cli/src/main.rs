//! `vdisk`: the command-line tool of the vdisk disk store.
//!
//! Thin on purpose: parse the command line ([`args`]), run the command
//! ([`commands`]: here, or in a running daemon through [`remote`]), turn
//! errors into a message, a hint and an exit code ([`error::CliError::exit_code`]).
//! [`handler`] is the daemon's side: `vdisk serve` runs the commands its
//! API receives with it.
#![forbid(unsafe_code)]

mod args;
mod commands;
mod error;
mod handler;
mod output;
mod progress;
mod remote;

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let code = if e.use_stderr() { error::USAGE_EXIT } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.broken_pipe => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is closed.
            let _ = std::io::stderr().write_all(e.render().as_bytes());
            ExitCode::from(e.exit_code())
        }
    }
}

//! `kallista`: the command line. Argument parsing only; the work is in
//! `kallista-jobs`, and errors become messages and exit codes here.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc keeps freed pages for reuse: glibc's malloc unmaps large tensors after each step,
/// and the page faults and TLB shootdowns cost several percent of a training step.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kallista",
    version,
    about = "Keras-style deep learning, trained data-parallel on DataFusion Ballista"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the video-QA model in-process on a small synthetic task and report its accuracy.
    Demo {
        /// Training clips.
        #[arg(long, default_value_t = 512)]
        samples: usize,
        #[arg(long, default_value_t = 15)]
        epochs: usize,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { samples, epochs, seed } => {
            kallista_jobs::demo::run_demo(samples, epochs, seed, |line| println!("{line}")).map(|_| ())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

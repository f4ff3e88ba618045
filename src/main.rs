//! The `tine` command: parses the command line and hands over to the crates.

mod logger;
mod stats_cmd;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tine_config::{Config, Overrides};

#[derive(Parser)]
#[command(name = "tine", version, about = "A pre-fork HTTP/1.1 front end for Linux")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: a master and one pinned worker per CPU.
    Serve {
        #[command(flatten)]
        settings: Settings,
    },
    /// Validate a configuration file and exit.
    Check {
        /// Configuration file to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print statistics read straight from the shared-memory region.
    Stats {
        /// Region to read (default: the only running tine's, or port 8080's).
        #[arg(long)]
        stats_path: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct Settings {
    /// TOML configuration file; flags override what it says.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Directory to serve (default: the current directory).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Address to listen on, IP:PORT (repeatable; default 127.0.0.1:8080; port 0 picks one).
    #[arg(long)]
    listen: Vec<String>,
    /// Number of worker processes (default: one per CPU this process may use).
    #[arg(long)]
    workers: Option<usize>,
    /// Where to create the statistics region (default /dev/shm/tine-PORT.stats).
    #[arg(long)]
    stats_path: Option<PathBuf>,
    /// Where to write the master's pid (default $XDG_RUNTIME_DIR, /run or /tmp, tine-PORT.pid).
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

impl Settings {
    fn resolve(self) -> anyhow::Result<Config> {
        let overrides = Overrides {
            root: self.root,
            listen: self.listen,
            workers: self.workers,
            stats_path: self.stats_path,
            pid_file: self.pid_file,
        };
        Ok(Config::resolve(self.config.as_deref(), &overrides)?)
    }
}

fn main() {
    logger::install();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { settings } => serve(settings),
        Command::Check { config } => check(&config),
        Command::Stats { stats_path, json } => stats_cmd::run(stats_path, json),
    };
    if let Err(e) = result {
        eprintln!("tine: {e:#}");
        std::process::exit(1);
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let config = settings.resolve()?;
    tine_master::serve(config).context("cannot start")
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    Config::load(path)?;
    println!("{}: configuration is valid", path.display());
    Ok(())
}

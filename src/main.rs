//! The `tine` command: parses the command line and hands over to the crates.

#![forbid(unsafe_code)]

mod signal_cmd;
mod stats_cmd;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tine_config::{Config, Overrides, Source};

#[derive(Parser)]
#[command(name = "tine", version, about = "A pre-fork HTTP/1.1 and HTTP/2 front end for Linux")]
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
    /// Check the kernel's settings against what a configuration needs.
    Tune(TuneArgs),
    /// Print statistics read straight from the shared-memory region.
    Stats(stats_cmd::StatsArgs),
    /// Send a control signal to a running master, like `nginx -s`.
    Signal {
        /// reload (HUP), stop (TERM), quit (QUIT, graceful), reopen (USR1), upgrade (USR2),
        /// drain (TTOU: health checks answer 503), undrain (TTIN).
        action: signal_cmd::Action,
        /// The master's pid file (default: from --config, else port 8080's).
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Configuration whose pid_file (or first listen port) locates the master.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The ACME process, which the master starts and supervises: not for
    /// running by hand.
    #[command(name = "acme-process", hide = true)]
    AcmeProcess,
}

#[derive(clap::Args)]
struct TuneArgs {
    /// Configuration whose needs are checked (default: the defaults).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Exit with status 1 when a setting the configuration depends on falls short.
    #[arg(long)]
    check: bool,
    /// Print a sysctl.d drop-in of the recommended values.
    #[arg(long, conflicts_with_all = ["check", "apply"])]
    sysctl: bool,
    /// Write the drop-in (keeping values that are already better) and apply
    /// it, reporting each change; running it again changes nothing.
    #[arg(long)]
    apply: bool,
    /// Where --apply writes the drop-in.
    #[arg(long, default_value = "/etc/sysctl.d/90-tine.conf")]
    sysctl_file: PathBuf,
    /// The tree of kernel settings to read and write.
    #[arg(long, default_value = "/proc/sys", hide = true)]
    proc_sys: PathBuf,
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
    /// Where to create the statistics region (default /run/tine-PORT.stats as root, else $XDG_RUNTIME_DIR or /dev/shm).
    #[arg(long)]
    stats_path: Option<PathBuf>,
    /// Where to write the master's pid (default $XDG_RUNTIME_DIR, /run or /tmp, tine-PORT.pid).
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

impl Settings {
    fn source(self) -> Source {
        let flags = Overrides {
            root: self.root,
            listen: self.listen,
            workers: self.workers,
            stats_path: self.stats_path,
            pid_file: self.pid_file,
        };
        Source { file: self.config, flags }
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { settings } => serve(settings),
        Command::Check { config } => check(&config),
        Command::Tune(args) => tune(args),
        Command::Stats(args) => stats_cmd::run(args),
        Command::Signal { action, pid_file, config } => signal_cmd::run(action, pid_file, config),
        Command::AcmeProcess => tine_acme::process::run().map_err(anyhow::Error::msg),
    };
    if let Err(e) = result {
        eprintln!("tine: {e:#}");
        std::process::exit(1);
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    // Read before anything can replace the binary on disk: an upgrade runs
    // whatever is at this path then.
    let exe = std::env::current_exe().context("cannot find the tine binary")?;
    let args = std::env::args_os().skip(1).collect();
    let source = settings.source();
    let config = source.resolve()?;
    tine_logging::install(tine_master::master_cycle::error_log_target(&config))?;
    let launch = tine_master::master_cycle::Launch { config, source, exe, args };
    tine_master::serve(launch).context("cannot start")
}

/// The kernel tuning doctor (crates/tune).
fn tune(args: TuneArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let kernel = tine_tune::Kernel::at(&args.proc_sys);
    let findings = tine_tune::examine(&config, &kernel, tine_tune::nofile_limit());
    if args.sysctl {
        print!("{}", tine_tune::dropin(&findings));
        return Ok(());
    }
    print!("{}", tine_tune::table(&findings));
    if args.apply {
        let changes = tine_tune::apply(&findings, &kernel, &args.sysctl_file)
            .with_context(|| format!("applying kernel settings (drop-in {})", args.sysctl_file.display()))?;
        println!();
        if changes.is_empty() {
            println!("nothing to change; {} is up to date", args.sysctl_file.display());
        }
        for c in &changes {
            println!("set {} = {} (was {})", c.key, c.to, c.from);
        }
        // What was applied is read back for --check below.
        let after = tine_tune::examine(&config, &kernel, tine_tune::nofile_limit());
        return check_shortfalls(&after, args.check);
    }
    check_shortfalls(&findings, args.check)
}

fn check_shortfalls(findings: &[tine_tune::Finding], check: bool) -> anyhow::Result<()> {
    let short: Vec<&str> = tine_tune::shortfalls(findings).map(|f| f.key.as_str()).collect();
    if check && !short.is_empty() {
        anyhow::bail!("short for this configuration: {}", short.join(", "));
    }
    Ok(())
}

/// Validates the file, and reads every certificate the way a start or a
/// reload would: a pair that does not match is an error; an expiry within 30
/// days, an uncovered routed host or a key others can read is a warning.
fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    match tine_master::privileges::resolve(&config)? {
        Some(run_as) => println!("workers run as {} (uid {}, gid {})", run_as.user, run_as.uid, run_as.gid),
        None if nix::unistd::geteuid().is_root() => {
            eprintln!("warning: workers would serve as root: set user (and group) to the account they should run as")
        }
        None => {}
    }
    if config.uses_tls() {
        let tls = tine_tls::TlsContext::load(&config, None, None)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
        for warning in tls.warnings(&config, now) {
            eprintln!("warning: {warning}");
        }
        for c in tls.certificates.iter() {
            println!(
                "certificate {} ({}, {}, {}) covers {}; expires in {} days",
                c.cert_path.display(),
                c.origin.name(),
                c.inspection.algorithm.name(),
                c.key_path.display(),
                c.inspection.names.join(", "),
                c.expires_in(now) / 86_400
            );
        }
    }
    if let Some(acme) = &config.acme {
        for warning in tine_tls::acme_storage::warnings(acme, &config) {
            eprintln!("warning: {warning}");
        }
        println!(
            "acme: {} from {} ({}), stored in {}",
            acme.challenge.name(),
            acme.directory,
            acme.email.as_deref().unwrap_or("no contact email"),
            acme.storage.display()
        );
    }
    println!("{}: configuration is valid", path.display());
    Ok(())
}

//! `tine signal ACTION`: finds the master through its pid file and signals it,
//! the counterpart of `nginx -s`.

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use std::path::PathBuf;
use tine_config::Config;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Action {
    /// HUP: re-read the configuration and start a new generation of workers.
    Reload,
    /// TERM: stop at once.
    Stop,
    /// QUIT: stop gracefully, finishing in-flight responses.
    Quit,
    /// USR1: reopen the log files.
    Reopen,
    /// USR2: start the binary on disk and hand over to it.
    Upgrade,
    /// TTOU: go on serving, but answer health checks with 503 so that load
    /// balancers take this server out.
    Drain,
    /// TTIN: end a drain; health checks answer 200 again.
    Undrain,
}

impl Action {
    fn signal(self) -> (Signal, &'static str) {
        match self {
            Action::Reload => (Signal::SIGHUP, "HUP"),
            Action::Stop => (Signal::SIGTERM, "TERM"),
            Action::Quit => (Signal::SIGQUIT, "QUIT"),
            Action::Reopen => (Signal::SIGUSR1, "USR1"),
            Action::Upgrade => (Signal::SIGUSR2, "USR2"),
            Action::Drain => (Signal::SIGTTOU, "TTOU"),
            Action::Undrain => (Signal::SIGTTIN, "TTIN"),
        }
    }
}

pub fn run(action: Action, pid_file: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let pid_file = match (pid_file, config) {
        (Some(p), _) => p,
        (None, Some(c)) => {
            let config = Config::load(&c)?;
            let port = config.listen.first().map_or(8080, |a| a.port());
            config.pid_file.unwrap_or_else(|| tine_master::paths::default_pid_file(port))
        }
        (None, None) => tine_master::paths::default_pid_file(8080),
    };
    let text = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("cannot read pid file {}: is tine running?", pid_file.display()))?;
    let pid: i32 = match text.trim().parse() {
        Ok(p) if p > 0 => p,
        _ => bail!("pid file {} does not hold a pid: {:?}", pid_file.display(), text.trim()),
    };
    let (sig, name) = action.signal();
    if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
        bail!("cannot send {name} to pid {pid} (from {}): {e}", pid_file.display());
    }
    eprintln!("sent {name} to tine master {pid}");
    Ok(())
}

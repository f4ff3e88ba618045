//! The tine master: it binds every listening socket, creates the statistics
//! region, forks one CPU-pinned worker per slot and then supervises them, driven
//! by signals as nginx's master is. It never serves traffic itself.
//!
//! Start reading at [`master_cycle`]; [`spawn`] is the fork into a slot,
//! [`upgrade`] the hand-over to a new binary, [`pid_file`] and [`paths`] the
//! files it leaves for operators, [`acme_process`] the supervision of the
//! process that obtains certificates.

pub mod acme_process;
pub mod client_limits;
pub mod master_cycle;
pub mod notify;
pub mod paths;
pub mod pid_file;
pub mod privileges;
pub mod sampler;
pub mod signals;
pub mod spawn;
pub mod upgrade;

pub use master_cycle::serve;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Net(#[from] tine_net::NetError),
    #[error(transparent)]
    Stats(#[from] tine_stats::CreateError),
    #[error(
        "pid file {path} names a running process ({pid}); \
         is tine already running? Stop it, or pass another --pid-file"
    )]
    AlreadyRunning { path: PathBuf, pid: i32 },
    #[error("pid file {path}: {source}")]
    PidFile { path: PathBuf, source: std::io::Error },
    #[error("signal set-up: {0}")]
    Signals(std::io::Error),
    #[error("cannot fork a worker: {0}")]
    Fork(std::io::Error),
    #[error("{0}")]
    Other(String),
}

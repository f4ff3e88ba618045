//! The ACME process: obtains and renews the certificates named by
//! `[[certificate]] acme = [...]` (RFC 8555), so that no certbot, cron or
//! reload hook is needed beside tine.
//!
//! The master starts it (`tine acme-process`, the running binary executed
//! afresh, so it inherits nothing of the master but what it is handed) and
//! supervises it; it never serves traffic, and no worker runs ACME code.
//!
//! - [`job`]: what the master hands it: the `[acme]` table, the certificates,
//!   the challenge board and the report pipe.
//! - [`schedule`]: when each certificate is due, and how long a failed order
//!   waits before the next attempt.
//! - [`order`]: one order: challenges published on the board for the workers
//!   to answer, a fresh key and CSR, the chain downloaded.
//! - [`process`]: the process's life: storage lock, account, the loop of
//!   orders, reports to the master.
//! - [`report`]: what it tells the master: a certificate stored (to put into
//!   service as a reload would), and each certificate's state for the
//!   statistics.

pub mod job;
pub mod order;
pub mod process;
pub mod report;
pub mod schedule;

pub use job::Job;
pub use report::Report;

/// The subcommand the master runs the ACME process as.
pub const SUBCOMMAND: &str = "acme-process";

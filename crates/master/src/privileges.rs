//! Who the workers run as. The master keeps root: it binds listeners, opens
//! logs and the stats region, re-reads configuration and certificates on a
//! reload and executes the new binary on an upgrade. Each worker drops to
//! the configured user right after it has set itself up (tine-worker's
//! `drop_privileges`), so the code that reads network input never runs as
//! root. The files workers write by name (logs they reopen) are handed to
//! that user; the stats region is readable by its group.

use crate::MasterError;
use nix::unistd::{chown, fchown, Gid, Group, Uid, User};
use std::path::Path;
use tine_config::Config;

/// The identity workers take on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Looks up the configured `user` and `group`; None when no user is set.
pub fn resolve(config: &Config) -> Result<Option<RunAs>, MasterError> {
    let Some(name) = &config.user else {
        if config.group.is_some() {
            return Err(MasterError::Other("group is set without user".into()));
        }
        return Ok(None);
    };
    let user = User::from_name(name)
        .map_err(|e| MasterError::Other(format!("user {name}: {e}")))?
        .ok_or_else(|| MasterError::Other(format!("user {name}: no such user")))?;
    let gid = match &config.group {
        None => user.gid,
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| MasterError::Other(format!("group {g}: {e}")))?
                .ok_or_else(|| MasterError::Other(format!("group {g}: no such group")))?
                .gid
        }
    };
    if user.uid.is_root() {
        return Err(MasterError::Other(format!("user {name} is root: workers would keep every privilege")));
    }
    Ok(Some(RunAs { user: name.clone(), uid: user.uid, gid }))
}

/// Makes sure a file the workers open by name (a log they reopen after
/// logrotate) exists and is their user's: created by the master (0640) when
/// missing, since the workers may not write its directory. The user may
/// write that directory, so what is at the path is untrusted: it is opened
/// without following a symlink, must be a regular file with one link (not a
/// hard link to a file elsewhere), and the opened file's owner is changed,
/// never the path's.
pub fn hand_over(path: &Path, run_as: &RunAs) {
    let handed = tine_fs::open_log(path, 0o640).and_then(|file| {
        use std::os::unix::fs::MetadataExt;
        if file.metadata()?.nlink() != 1 {
            return Err(std::io::Error::other("it has more than one hard link"));
        }
        fchown(&file, Some(run_as.uid), Some(run_as.gid)).map_err(Into::into)
    });
    if let Err(e) = handed {
        log::warn!("cannot give {} to user {}: {e}", path.display(), run_as.user);
    }
}

/// The stats region: the master's to write, readable by the workers'
/// group (ops tools in that group read it), nobody else's.
pub fn share_region(path: &Path, run_as: &RunAs) {
    if let Err(e) = chown(path, None, Some(run_as.gid)) {
        log::warn!("cannot give the stats region {} to group {}: {e}", path.display(), run_as.gid);
    }
}

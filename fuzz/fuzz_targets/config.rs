//! The configuration loader: any text is a configuration or an error that
//! names the file, never a panic; an accepted one answers every question
//! the master asks of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tine_config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            for (addr, role) in config.listener_roles() {
                let _ = config.listener_tcp(addr, role);
            }
            let _ = config.effective_routes();
            let _ = config.all_listen_addrs();
            let _ = config.uses_tls();
        }
        Err(e) => assert!(e.to_string().contains("fuzz.toml"), "{e}"),
    }
});

//! Prints the field tables with their offsets, the source of the tables in
//! docs/stats-abi.md (a test checks the two agree).
use std::mem::offset_of;
use tine_stats::layout::{
    Field, Host, HostSection, InterfaceEntry, Kind, Slot, HEADER_SIZE, HOST_FIELDS, HOST_SIZE, MASTER_FIELDS,
    MASTER_SIZE, SLOT_FIELDS, SLOT_SIZE,
};

fn table(fields: &[Field]) {
    for f in fields {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Info => "info",
        };
        println!("| {} | `{}` | {} | {} |", f.offset, f.name, kind, f.help);
    }
}

fn main() {
    println!("header {HEADER_SIZE} master {MASTER_SIZE} host {HOST_SIZE} slot {SLOT_SIZE}");
    println!("master");
    table(MASTER_FIELDS);
    println!("host ({} bytes of fields)", std::mem::size_of::<HostSection>());
    table(HOST_FIELDS);
    println!("interfaces at {}", offset_of!(Host, interfaces));
    println!(
        "interface entry: name {} rx_bytes {} rx_drops {} tx_bytes {} tx_drops {}",
        offset_of!(InterfaceEntry, name),
        offset_of!(InterfaceEntry, rx_bytes),
        offset_of!(InterfaceEntry, rx_drops),
        offset_of!(InterfaceEntry, tx_bytes),
        offset_of!(InterfaceEntry, tx_drops)
    );
    println!("slot");
    table(SLOT_FIELDS);
    println!("latency_us at {}", offset_of!(Slot, latency_us));
    use tine_stats::Header;
    println!(
        "header: upstreams_offset {} upstream_count {} upstream_capacity {} upstream_name_size {} upstream_entry_size {}",
        offset_of!(Header, upstreams_offset),
        offset_of!(Header, upstream_count),
        offset_of!(Header, upstream_capacity),
        offset_of!(Header, upstream_name_size),
        offset_of!(Header, upstream_entry_size)
    );
    println!("upstream");
    table(tine_stats::layout::UPSTREAM_FIELDS);
}

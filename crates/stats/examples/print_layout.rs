//! Prints the field tables with offsets, the source for docs/stats-abi.md.
use tine_stats::layout::{Kind, HEADER_SIZE, MASTER_FIELDS, MASTER_SIZE, SLOT_FIELDS, SLOT_SIZE};

fn main() {
    println!("header {HEADER_SIZE} master {MASTER_SIZE} slot {SLOT_SIZE}");
    for (name, fields) in [("master", MASTER_FIELDS), ("slot", SLOT_FIELDS)] {
        println!("{name}");
        for f in fields {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Info => "info",
            };
            println!("| {} | `{}` | {} | {} |", f.offset, f.name, kind, f.help);
        }
    }
}

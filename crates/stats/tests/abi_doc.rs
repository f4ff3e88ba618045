//! docs/stats-abi.md is the contract for readers in other languages: every
//! field of every section must appear in it at its real offset, and nothing
//! else may.

use tine_stats::layout::{Field, HOST_FIELDS, LIMIT_FIELDS, MASTER_FIELDS, SLOT_FIELDS, UPSTREAM_FIELDS};

fn documented(section: &str) -> Vec<(usize, String)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/stats-abi.md")).unwrap();
    let start = doc.find(&format!("<!-- fields:{section} -->")).expect("section marker");
    let end = start + doc[start..].find("<!-- end -->").expect("end marker");
    doc[start..end]
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| offset") && !l.starts_with("| ---"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].parse().expect("offset"), cells[2].trim_matches('`').to_string())
        })
        .collect()
}

fn actual(fields: &[Field]) -> Vec<(usize, String)> {
    fields.iter().map(|f| (f.offset, f.name.to_string())).collect()
}

#[test]
fn slot_fields_match_the_document() {
    assert_eq!(documented("slot"), actual(SLOT_FIELDS));
}

#[test]
fn master_fields_match_the_document() {
    assert_eq!(documented("master"), actual(MASTER_FIELDS));
}

#[test]
fn upstream_fields_match_the_document() {
    assert_eq!(documented("upstream"), actual(UPSTREAM_FIELDS));
}

#[test]
fn client_limit_fields_match_the_document() {
    assert_eq!(documented("limit"), actual(LIMIT_FIELDS));
}

#[test]
fn host_fields_match_the_document() {
    assert_eq!(documented("host"), actual(HOST_FIELDS));
}

#[test]
fn fixed_offsets_the_document_states() {
    use std::mem::{offset_of, size_of};
    use tine_stats::layout::{Host, InterfaceEntry, Slot};
    assert_eq!(offset_of!(Slot, latency_us), 184);
    assert_eq!(offset_of!(Slot, sampled_rtt_us), 552);
    assert_eq!(offset_of!(Slot, rejected_malformed), 808);
    assert_eq!(size_of::<Slot>(), 1152);
    assert_eq!(offset_of!(Host, interfaces), 128);
    assert_eq!(size_of::<InterfaceEntry>(), 64);
    assert_eq!(offset_of!(InterfaceEntry, rx_bytes), 16);
    assert_eq!(offset_of!(InterfaceEntry, tx_drops), 40);
}

#[test]
fn header_offsets_match_the_document() {
    use std::mem::offset_of;
    use tine_stats::Header;
    let expected = vec![
        (offset_of!(Header, magic), "magic".to_string()),
        (offset_of!(Header, layout_version), "layout_version".into()),
        (offset_of!(Header, endian_check), "endian_check".into()),
        (offset_of!(Header, header_size), "header_size".into()),
        (offset_of!(Header, master_size), "master_size".into()),
        (offset_of!(Header, slot_count), "slot_count".into()),
        (offset_of!(Header, slot_size), "slot_size".into()),
        (offset_of!(Header, listener_count), "listener_count".into()),
        (offset_of!(Header, listener_entry_size), "listener_entry_size".into()),
        (offset_of!(Header, master_offset), "master_offset".into()),
        (offset_of!(Header, listeners_offset), "listeners_offset".into()),
        (offset_of!(Header, slots_offset), "slots_offset".into()),
        (offset_of!(Header, total_size), "total_size".into()),
        (offset_of!(Header, master_pid), "master_pid".into()),
        (offset_of!(Header, start_unix_ms), "start_unix_ms".into()),
        (offset_of!(Header, heartbeat_unix_ms), "heartbeat_unix_ms".into()),
        (offset_of!(Header, state), "state".into()),
        (offset_of!(Header, host_offset), "host_offset".into()),
        (offset_of!(Header, host_size), "host_size".into()),
        (offset_of!(Header, interface_capacity), "interface_capacity".into()),
        (offset_of!(Header, upstreams_offset), "upstreams_offset".into()),
        (offset_of!(Header, upstream_count), "upstream_count".into()),
        (offset_of!(Header, upstream_capacity), "upstream_capacity".into()),
        (offset_of!(Header, upstream_name_size), "upstream_name_size".into()),
        (offset_of!(Header, upstream_entry_size), "upstream_entry_size".into()),
        (offset_of!(Header, upstream_names_seq), "upstream_names_seq".into()),
        (offset_of!(Header, certificates_offset), "certificates_offset".into()),
        (offset_of!(Header, certificate_count), "certificate_count".into()),
        (offset_of!(Header, certificate_capacity), "certificate_capacity".into()),
        (offset_of!(Header, certificate_entry_size), "certificate_entry_size".into()),
        (offset_of!(Header, limit_capacity), "limit_capacity".into()),
        (offset_of!(Header, limits_offset), "limits_offset".into()),
        (offset_of!(Header, limit_count), "limit_count".into()),
        (offset_of!(Header, limit_entry_size), "limit_entry_size".into()),
    ];
    assert_eq!(std::mem::size_of::<Header>(), 192);
    assert_eq!(documented("header"), expected);
}

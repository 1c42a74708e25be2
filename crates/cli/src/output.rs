//! Human output: tables and sizes.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    table.to_string()
}

/// Bytes for people: `1.5 GB` (powers of 1000).
pub fn bytes(n: u64) -> String {
    colo_store::fmt_bytes(n)
}

/// "3s ago" style age of a millisecond timestamp.
pub fn age(at_ms: u64) -> String {
    let secs = colo_core::unix_ms().saturating_sub(at_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

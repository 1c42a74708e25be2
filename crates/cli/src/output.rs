//! Human output: tables and sizes.

use comfy_table::{presets, Table};

/// A table for people. On a terminal (or with `COLUMNS` set) it fits the width: drawn with a
/// box when that fits, else with spaces between columns only, else with the last columns left
/// out and a line that says so. Cells are never broken. Into a pipe or a file every row is
/// whole, on one line.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let Some(width) = terminal_width() else {
        return render(presets::UTF8_BORDERS_ONLY, header, &rows);
    };
    let boxed = render(presets::UTF8_BORDERS_ONLY, header, &rows);
    if widest(&boxed) <= width {
        return boxed;
    }
    for keep in (1..=header.len()).rev() {
        let cut: Vec<Vec<String>> = rows.iter().map(|r| r.iter().take(keep).cloned().collect()).collect();
        let plain = render(presets::NOTHING, &header[..keep], &cut);
        if widest(&plain) <= width || keep == 1 {
            if keep == header.len() {
                return plain;
            }
            let left_out = header[keep..].join(", ");
            return format!("{plain}\n({left_out} left out to fit {width} columns; --json has every field)");
        }
    }
    boxed
}

fn render(preset: &str, header: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = Table::new();
    table.load_preset(preset).set_header(header.to_vec());
    for row in rows {
        table.add_row(row.clone());
    }
    table.to_string()
}

fn widest(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

/// The width to fit: `COLUMNS` when set, else the terminal's when stdout is one.
fn terminal_width() -> Option<usize> {
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<usize>().ok()) {
        return Some(columns).filter(|&c| c > 0);
    }
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass; it fails on a non-terminal.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(usize::from(size.ws_col))
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

//! A compact terminal picture of the attribute map.
//!
//! One character per cell of guest_memfd memory: `#` private, `.` shared,
//! `%` a cell holding both.

use privmem_runner::report::AttrRange;

fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0)
}

/// Renders `ranges` (sorted, as in the report) into a bar of `width` cells
/// plus a legend line listing the ranges.
pub fn draw(ranges: &[AttrRange], width: usize) -> String {
    let spans: Vec<(u64, u64, bool)> = ranges
        .iter()
        .map(|r| {
            let start = parse_hex(&r.gpa);
            (start, start.saturating_add(parse_hex(&r.size)), r.private)
        })
        .collect();
    let (Some(first), Some(last)) = (spans.first(), spans.last()) else {
        return "  memory map: (no guest_memfd memory)".into();
    };
    let (lo, hi) = (first.0, last.1);
    let total = hi.saturating_sub(lo).max(1);
    let width = width.max(1);
    let cell = total.div_ceil(width as u64).max(1);
    let mut bar = String::with_capacity(width);
    for i in 0..width as u64 {
        let (cs, ce) = (lo + i * cell, (lo + (i + 1) * cell).min(hi));
        if cs >= hi {
            break;
        }
        let (mut p, mut s) = (false, false);
        for &(a, b, private) in &spans {
            if a < ce && cs < b {
                if private {
                    p = true;
                } else {
                    s = true;
                }
            }
        }
        bar.push(match (p, s) {
            (true, true) => '%',
            (true, false) => '#',
            _ => '.',
        });
    }
    let listed: Vec<String> = ranges
        .iter()
        .take(8)
        .map(|r| {
            format!(
                "{}+{} {}",
                r.gpa,
                r.size,
                if r.private { "private" } else { "shared" }
            )
        })
        .collect();
    let more = ranges.len().saturating_sub(8);
    let tail = if more > 0 {
        format!(" (+{more} more)")
    } else {
        String::new()
    };
    format!(
        "  memory map [{lo:#x}, {hi:#x}) ({}, # private . shared % mixed):\n  |{bar}|\n  {}{tail}",
        human(total),
        listed.join(", ")
    )
}

/// Bytes as KiB/MiB/GiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {name}", bytes / size);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(gpa: u64, size: u64, private: bool) -> AttrRange {
        AttrRange {
            gpa: format!("{gpa:#x}"),
            size: format!("{size:#x}"),
            private,
        }
    }

    #[test]
    fn draw_marks_private_and_shared_cells() {
        let pic = draw(&[r(0, 0x2000, true), r(0x2000, 0x2000, false)], 4);
        assert!(pic.contains("|##..|"), "{pic}");
    }

    #[test]
    fn draw_marks_mixed_cells() {
        let pic = draw(&[r(0, 0x1000, true), r(0x1000, 0x3000, false)], 2);
        assert!(pic.contains("|%.|"), "{pic}");
    }

    #[test]
    fn draw_empty_says_so() {
        assert!(draw(&[], 10).contains("no guest_memfd"));
    }
}

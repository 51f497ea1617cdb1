//! Progress bars, plain progress lines, the final line and the
//! `migrations` table, as pure functions of a migration's JSON.

use super::*;

/// The live line on a terminal:
/// `migration 7 move p3 a→b  copying  [#########-----------] 45%  12,345/27,000 rows  3.1 MB  1.2 MB/s  ETA 4s`.
/// Outside the copy the percentage means nothing, so it shows the step.
pub fn progress_line(m: &Migration, bar_width: usize) -> String {
    let mut line = format!("migration {} {}  {}", m.id, describe(m), m.state);
    if m.state == "copying" {
        let fraction = fraction(m.rows_copied, m.rows_total);
        line.push_str(&format!(
            "  {} {:>3}%  {}/{} rows  {}",
            bar(fraction, bar_width),
            (fraction * 100.0).floor() as u32,
            fmt_count(m.rows_copied),
            fmt_count(m.rows_total),
            fmt_bytes(m.bytes_copied as f64),
        ));
        if m.rate > 0.0 {
            line.push_str(&format!("  {}/s", fmt_bytes(m.rate)));
        }
        if let Some(eta) = m.eta_secs {
            line.push_str(&format!("  ETA {}", fmt_secs(eta)));
        }
    } else if m.rows_copied > 0 {
        line.push_str(&format!(
            "  {} rows  {} copied",
            fmt_count(m.rows_copied),
            fmt_bytes(m.bytes_copied as f64)
        ));
    }
    line
}

/// One line per state change (or per second of copying) when stdout is not
/// a terminal: `migration 7: copying 12345/27000 rows, 3.1 MB, 1.2 MB/s, ETA 4s`.
pub fn plain_line(m: &Migration) -> String {
    let mut line = format!("migration {}: {}", m.id, m.state);
    if m.state == "copying" {
        line.push_str(&format!(
            " {}/{} rows, {}",
            m.rows_copied,
            m.rows_total,
            fmt_bytes(m.bytes_copied as f64)
        ));
        if m.rate > 0.0 {
            line.push_str(&format!(", {}/s", fmt_bytes(m.rate)));
        }
        if let Some(eta) = m.eta_secs {
            line.push_str(&format!(", ETA {}", fmt_secs(eta)));
        }
    }
    line
}

/// `migration 7 done in 2.3s (27000 rows, 3.1 MB; writes held 85 ms)`, or
/// `migration 7 aborted: <reason>`. A split or merge (no rows copied) says
/// what it did instead.
pub fn final_line(m: &Migration) -> String {
    if m.state == "aborted" {
        return format!(
            "migration {} aborted: {}",
            m.id,
            m.reason.as_deref().unwrap_or("no reason recorded")
        );
    }
    let mut line = format!("migration {} {}", m.id, m.state);
    if let Some(secs) = elapsed_secs(m) {
        line.push_str(&format!(" in {}", fmt_duration(secs)));
    }
    match m.reason.as_deref() {
        Some(reason) if m.kind != "move" && m.rows_copied == 0 => {
            line.push_str(&format!(": {reason}"));
        }
        _ => {
            line.push_str(&format!(
                " ({} rows, {}",
                m.rows_copied,
                fmt_bytes(m.bytes_copied as f64)
            ));
            if let Some(ms) = m.pause_ms {
                line.push_str(&format!("; writes held {}", fmt_ms(ms)));
            }
            line.push(')');
        }
    }
    line
}

/// The `migrations` table, newest first as the API lists them.
pub fn render_table(list: &[Migration]) -> String {
    if list.is_empty() {
        return "no migrations\n".to_string();
    }
    let header = [
        "ID",
        "KIND",
        "PARTITION",
        "SOURCE→TARGET",
        "STATE",
        "ROWS",
        "BYTES",
        "PAUSE MS",
        "REASON",
    ];
    // Numbers right-aligned, text left.
    let right = [true, false, true, false, false, true, true, true, false];
    let rows: Vec<[String; 9]> = list
        .iter()
        .map(|m| {
            [
                m.id.to_string(),
                m.kind.clone(),
                m.partition.to_string(),
                format!("{}→{}", m.source, m.target),
                m.state.clone(),
                format!("{}/{}", fmt_count(m.rows_copied), fmt_count(m.rows_total)),
                fmt_bytes(m.bytes_copied as f64),
                m.pause_ms
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms:.0}")),
                m.reason
                    .as_deref()
                    .map_or_else(|| "-".to_string(), |r| truncate(r, REASON_WIDTH)),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if right[i] {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `[#########-----------]` for `fraction` of `width`.
pub fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

pub(super) fn fraction(done: i64, total: i64) -> f64 {
    if total <= 0 {
        0.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// Bytes with one decimal in B, kB, MB, GB or TB (powers of 1000).
pub fn fmt_bytes(bytes: f64) -> String {
    if !bytes.is_finite() || bytes < 999.5 {
        return format!("{} B", bytes.max(0.0).round() as u64);
    }
    let mut value = bytes;
    for unit in ["kB", "MB", "GB"] {
        value /= 1000.0;
        // 999.96 kB would print as 1000.0 kB: call that 1.0 MB.
        if value < 999.95 {
            return format!("{value:.1} {unit}");
        }
    }
    format!("{:.1} TB", value / 1000.0)
}

/// `12,345`.
pub fn fmt_count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// An ETA: `4s`, `2m05s`, `1h03m`.
pub fn fmt_secs(secs: f64) -> String {
    let s = secs.max(0.0).ceil() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// How long a migration took: `2.3s` under a minute, then as [`fmt_secs`].
pub fn fmt_duration(secs: f64) -> String {
    if secs < 59.95 {
        format!("{:.1}s", secs.max(0.0))
    } else {
        fmt_secs(secs)
    }
}

/// `85 ms`, or `0.4 ms` for very short holds.
pub(super) fn fmt_ms(ms: f64) -> String {
    if ms < 9.95 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    let s = s.replace(['\n', '\r'], " ");
    if s.chars().count() <= max {
        s
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Seconds since the epoch of a timestamp as Postgres prints a
/// `timestamptz` (`2024-05-01 12:34:56.123456+00`, offsets like `+05:30`;
/// an ISO `T` and `Z` are taken too). `None` for anything else.
pub fn parse_timestamp(s: &str) -> Option<f64> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, rest) = (s.get(..10)?, s.get(10..)?);
    let mut d = date.split('-');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) {
        return None;
    }
    let rest = rest.strip_prefix([' ', 'T'])?;
    let (time, offset) = match rest.find(['+', '-', 'Z']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let mut t = time.split(':');
    let (h, mi) = (num(t.next()?)?, num(t.next()?)?);
    let sec: f64 = match t.next() {
        Some(sec) if sec.bytes().all(|b| b.is_ascii_digit() || b == b'.') => sec.parse().ok()?,
        Some(_) => return None,
        None => 0.0,
    };
    if t.next().is_some() {
        return None;
    }
    let offset_secs = match offset {
        "" | "Z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let o = &o[1..];
            let parts: Vec<&str> = if o.contains(':') {
                o.split(':').collect()
            } else if o.len() == 4 {
                vec![&o[..2], &o[2..]]
            } else {
                vec![o]
            };
            let mut secs = 0;
            for (part, unit) in parts.iter().zip([3600, 60, 1]) {
                secs += num(part)? * unit;
            }
            if parts.len() > 3 {
                return None;
            }
            sign * secs
        }
    };
    let days = days_from_civil(y, mo, day);
    Some((days * 86_400 + h * 3600 + mi * 60 - offset_secs) as f64 + sec)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

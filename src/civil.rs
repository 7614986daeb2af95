//! Calendar dates to and from Unix seconds (proleptic Gregorian, UTC), for
//! EXIF capture times and the CLI's `--after 2024-07-01`: the arithmetic of
//! Howard Hinnant's `days_from_civil`, which needs no time-zone database.

/// Days since 1970-01-01 of a valid date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Unix seconds of a UTC clock time; `None` for an impossible one.
pub fn unix_from_civil(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<i64> {
    let valid = (1..=12).contains(&mo)
        && d >= 1
        && d <= days_in_month(y, mo)
        && h < 24
        && mi < 60
        && s < 61;
    valid.then(|| {
        days_from_civil(y, mo, d) * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s)
    })
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of Unix seconds.
pub fn format_utc(unix: i64) -> String {
    let (y, m, d) = civil_from_days(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]` (or a space for `T`) as UTC,
/// or plain Unix seconds.
pub fn parse_utc(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Some(n);
    }
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (t, None),
    };
    let mut ymd = date.split('-');
    let y = ymd.next()?.parse().ok()?;
    let mo = ymd.next()?.parse().ok()?;
    let d = ymd.next()?.parse().ok()?;
    if ymd.next().is_some() {
        return None;
    }
    let (h, mi, s) = match time {
        None => (0, 0, 0),
        Some(time) => {
            let mut hms = time.trim_end_matches('Z').split(':');
            let h = hms.next()?.parse().ok()?;
            let mi = hms.next()?.parse().ok()?;
            let s = hms.next().map_or(Some(0), |s| s.parse().ok())?;
            if hms.next().is_some() {
                return None;
            }
            (h, mi, s)
        }
    };
    unix_from_civil(y, mo, d, h, mi, s)
}

/// [`parse_utc`] for the end of a range: a bare date (`2024-07-01`) means
/// its last second, so "before the 1st" includes the 1st.
pub fn parse_utc_end(text: &str) -> Option<i64> {
    let t = parse_utc(text)?;
    let bare_date = !text.trim().contains([':', 'T', ' ']) && text.trim().contains('-');
    Some(if bare_date { t + 86_399 } else { t })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_unix_seconds() {
        assert_eq!(unix_from_civil(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(unix_from_civil(2024, 7, 1, 0, 0, 0), Some(1_719_792_000));
        assert_eq!(unix_from_civil(2000, 2, 29, 12, 0, 0), Some(951_825_600));
        assert_eq!(unix_from_civil(2023, 2, 29, 0, 0, 0), None);
        assert_eq!(unix_from_civil(2023, 13, 1, 0, 0, 0), None);
        assert_eq!(format_utc(1_719_792_000), "2024-07-01 00:00:00");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59");
        for t in [-10_000_000_000i64, -1, 0, 951_825_600, 4_102_444_799] {
            assert_eq!(parse_utc(&format_utc(t)), Some(t), "{t}");
        }
        assert_eq!(parse_utc("2024-07-01"), Some(1_719_792_000));
        assert_eq!(parse_utc("2024-07-01T01:02"), Some(1_719_795_720));
        assert_eq!(parse_utc("1719792000"), Some(1_719_792_000));
        assert_eq!(parse_utc("2024-07"), None);
        assert_eq!(parse_utc("yesterday"), None);
        assert_eq!(parse_utc_end("2024-07-01"), Some(1_719_792_000 + 86_399));
        assert_eq!(parse_utc_end("2024-07-01T01:02"), Some(1_719_795_720));
        assert_eq!(parse_utc_end("1719792000"), Some(1_719_792_000));
    }
}

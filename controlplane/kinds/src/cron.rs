//! Cron schedules as a CronJob's `spec.schedule` takes them: five fields (minute, hour, day of
//! month, month, day of week) of numbers, names (`JAN`, `mon`), `*` or `?`, ranges, steps and
//! lists, or a descriptor (`@hourly`, `@every 1h30m`), optionally after a `TZ=`/`CRON_TZ=`
//! prefix. Errors read as upstream's cron parser words them: they reach clients in the Invalid
//! status.

struct Bounds {
    min: u64,
    max: u64,
    /// Names of the values from `min` on (months from 1, weekdays from 0), lower case.
    names: &'static [&'static str],
}

const MINUTE: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DAY_OF_WEEK: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// Checks a schedule; the error says what is wrong with it.
pub fn validate_schedule(schedule: &str) -> Result<(), String> {
    parse(schedule).map(|_| ())
}

/// A parsed schedule: its time zone prefix, and when it fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The `TZ=`/`CRON_TZ=` prefix's zone, if any.
    pub time_zone: Option<String>,
    kind: Fires,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Fires {
    /// `@every`: a fixed interval, in whole seconds (at least one).
    Every(u64),
    /// One bit per allowed value of each field; a field written `*` or `?` is "any", which
    /// decides how day of month and day of week combine (both restricted: either matches).
    Fields {
        minute: u64,
        hour: u64,
        dom: u64,
        month: u64,
        dow: u64,
        dom_any: bool,
        dow_any: bool,
    },
}

/// Parses a schedule as upstream's cron library reads it.
pub fn parse(schedule: &str) -> Result<Schedule, String> {
    if schedule.is_empty() {
        return Err("empty spec string".into());
    }
    let mut spec = schedule;
    let mut time_zone = None;
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let eq = spec.find('=').unwrap_or(0);
        let Some(space) = spec.find(' ') else {
            let loc = &spec[eq + 1..];
            return Err(format!(
                "provided bad location {loc}: unknown time zone {loc}"
            ));
        };
        let loc = &spec[eq + 1..space];
        if !valid_time_zone_name(loc) {
            return Err(format!(
                "provided bad location {loc}: unknown time zone {loc}"
            ));
        }
        time_zone = Some(loc.to_string());
        spec = spec[space..].trim();
    }
    let expanded;
    if spec.starts_with('@') {
        if let Some(d) = spec.strip_prefix("@every ") {
            let nanos =
                go_duration(d).map_err(|e| format!("failed to parse duration {spec}: {e}"))?;
            // Intervals are whole seconds, at least one, as upstream rounds them.
            let secs = ((nanos / 1e9) as u64).max(1);
            return Ok(Schedule {
                time_zone,
                kind: Fires::Every(secs),
            });
        }
        expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ => return Err(format!("unrecognized descriptor: {spec}")),
        };
        spec = expanded;
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    let mut bits = [0u64; 5];
    let mut any = [false; 5];
    for (i, (field, bounds)) in fields
        .iter()
        .zip([&MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK])
        .enumerate()
    {
        for part in field.split(',').filter(|p| !p.is_empty()) {
            let (b, star) = range(part, bounds)?;
            bits[i] |= b;
            any[i] |= star;
        }
    }
    Ok(Schedule {
        time_zone,
        kind: Fires::Fields {
            minute: bits[0],
            hour: bits[1],
            dom: bits[2],
            month: bits[3],
            // Sunday may be written 7 too.
            dow: bits[4] | ((bits[4] >> 7) & 1),
            dom_any: any[2],
            dow_any: any[4],
        },
    })
}

impl Schedule {
    /// The first time this schedule fires strictly after `after`, in `tz`'s wall clock (a
    /// time a DST change skips is taken at the first instant after it). None if it never
    /// fires within five years (Feb 30th).
    pub fn next_after(
        &self,
        after: jiff::Timestamp,
        tz: &jiff::tz::TimeZone,
    ) -> Option<jiff::Timestamp> {
        let (minute, hour, dom, month, dow, dom_any, dow_any) = match &self.kind {
            Fires::Every(secs) => {
                return after
                    .checked_add(jiff::SignedDuration::from_secs(*secs as i64))
                    .ok();
            }
            Fires::Fields {
                minute,
                hour,
                dom,
                month,
                dow,
                dom_any,
                dow_any,
            } => (*minute, *hour, *dom, *month, *dow, *dom_any, *dow_any),
        };
        let has = |set: u64, v: i64| (0..64).contains(&v) && set & (1 << v) != 0;
        let start = after.to_zoned(tz.clone()).datetime();
        // The next whole minute.
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(jiff::Span::new().minutes(1))
            .ok()?;
        let limit = start.year() + 5;
        while t.year() <= limit {
            if !has(month, i64::from(t.month())) {
                t = t
                    .first_of_month()
                    .checked_add(jiff::Span::new().months(1))
                    .ok()?
                    .start_of_day();
                continue;
            }
            let dom_ok = has(dom, i64::from(t.day()));
            let dow_ok = has(dow, i64::from(t.weekday().to_sunday_zero_offset()));
            let day_ok = if dom_any || dow_any {
                dom_ok && dow_ok
            } else {
                dom_ok || dow_ok
            };
            if !day_ok {
                t = t
                    .start_of_day()
                    .checked_add(jiff::Span::new().days(1))
                    .ok()?;
                continue;
            }
            if !has(hour, i64::from(t.hour())) {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(jiff::Span::new().hours(1))
                    .ok()?;
                continue;
            }
            if !has(minute, i64::from(t.minute())) {
                t = t.checked_add(jiff::Span::new().minutes(1)).ok()?;
                continue;
            }
            let at = t.to_zoned(tz.clone()).ok()?.timestamp();
            if at > after {
                return Some(at);
            }
            t = t.checked_add(jiff::Span::new().minutes(1)).ok()?;
        }
        None
    }
}

/// Whether a time zone name is shaped like an IANA one (`Europe/Berlin`, `Etc/GMT+1`): parts of
/// 1 to 14 letters, digits or `.-_+`, none `.`, `..` or starting with `-`. Whether the zone
/// exists is not checked (that needs a time zone database).
pub fn valid_time_zone_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|part| {
            (1..=14).contains(&part.len())
                && part != "."
                && part != ".."
                && !part.starts_with('-')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
        })
}

/// One element of a field's list: `*`, `?`, `N`, `N-M`, any of them with `/step`; its values
/// as bits, and whether it is "any" (`*` or `?` without a step above one).
fn range(expr: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_high.len() == 1;
    let mut star = false;
    let (start, mut end) = if low_high[0] == "*" || low_high[0] == "?" {
        star = true;
        (b.min, b.max)
    } else {
        let start = int_or_name(low_high[0], b)?;
        match low_high.len() {
            1 => (start, start),
            2 => (start, int_or_name(low_high[1], b)?),
            _ => return Err(format!("too many hyphens: {expr}")),
        }
    };
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = parse_int(range_and_step[1])?;
            // `N/step` runs from N to the field's maximum.
            if single {
                end = b.max;
            }
            step
        }
        _ => return Err(format!("too many slashes: {expr}")),
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    if step > 1 {
        star = false;
    }
    let mut bits = 0u64;
    let mut v = start;
    while v <= end {
        bits |= 1 << v;
        v += step;
    }
    Ok((bits, star))
}

fn int_or_name(expr: &str, b: &Bounds) -> Result<u64, String> {
    let lower = expr.to_ascii_lowercase();
    match b.names.iter().position(|n| *n == lower) {
        Some(i) => Ok(b.min + i as u64),
        None => parse_int(expr),
    }
}

fn parse_int(expr: &str) -> Result<u64, String> {
    use std::num::IntErrorKind;
    let n: i64 = expr.parse().map_err(|e: std::num::ParseIntError| {
        let why = match e.kind() {
            IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => "value out of range",
            _ => "invalid syntax",
        };
        format!("failed to parse int from {expr}: strconv.Atoi: parsing {expr:?}: {why}")
    })?;
    if n < 0 {
        return Err(format!("negative number ({n}) not allowed: {expr}"));
    }
    Ok(n as u64)
}

/// Checks a duration the way Go's `time.ParseDuration` reads it: `90s`, `1h30m`, `1.5h`, `0`.
fn go_duration(orig: &str) -> Result<f64, String> {
    let invalid = || format!("time: invalid duration {orig:?}");
    let mut s = orig
        .strip_prefix('-')
        .or_else(|| orig.strip_prefix('+'))
        .unwrap_or(orig);
    if s == "0" {
        return Ok(0.0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let n = rest.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &rest[..n];
            s = &rest[n..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = s
            .bytes()
            .take_while(|c| *c != b'.' && !c.is_ascii_digit())
            .count();
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {orig:?}"));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {orig:?}")),
        };
        let int_part = if int_part.is_empty() { "0" } else { int_part };
        let frac_part = if frac_part.is_empty() { "0" } else { frac_part };
        let value: f64 = format!("{int_part}.{frac_part}")
            .parse()
            .unwrap_or(f64::INFINITY);
        total += value * nanos;
        if total > i64::MAX as f64 {
            return Err(invalid());
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_standard_schedules_and_descriptors() {
        for ok in [
            "*/5 * * * *",
            "0 0 * * *",
            "15,45 9-17 * JAN,jul MON-FRI",
            "0 12 1/2 * ?",
            "5-10/2 * * * 0",
            "@hourly",
            "@every 1h30m",
            "@every 1.5s",
            "TZ=Etc/UTC 0 * * * *",
            "CRON_TZ=UTC @daily",
        ] {
            assert_eq!(validate_schedule(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_schedules_with_upstreams_words() {
        assert_eq!(
            validate_schedule("61 * * * *").unwrap_err(),
            "end of range (61) above maximum (59): 61"
        );
        assert_eq!(
            validate_schedule("* * *").unwrap_err(),
            "expected exactly 5 fields, found 3: [* * *]"
        );
        assert_eq!(
            validate_schedule("* * 0 * *").unwrap_err(),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(
            validate_schedule("* * * * 7").unwrap_err(),
            "end of range (7) above maximum (6): 7"
        );
        assert_eq!(
            validate_schedule("5-2 * * * *").unwrap_err(),
            "beginning of range (5) beyond end of range (2): 5-2"
        );
        assert_eq!(
            validate_schedule("*/0 * * * *").unwrap_err(),
            "step of range should be a positive number: */0"
        );
        assert_eq!(
            validate_schedule("x * * * *").unwrap_err(),
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            validate_schedule("1-2-3 * * * *").unwrap_err(),
            "too many hyphens: 1-2-3"
        );
        assert_eq!(
            validate_schedule("* * * FOO *").unwrap_err(),
            "failed to parse int from FOO: strconv.Atoi: parsing \"FOO\": invalid syntax"
        );
        assert_eq!(
            validate_schedule("@often").unwrap_err(),
            "unrecognized descriptor: @often"
        );
        assert_eq!(
            validate_schedule("@every 1d").unwrap_err(),
            "failed to parse duration @every 1d: time: unknown unit \"d\" in duration \"1d\""
        );
        assert_eq!(
            validate_schedule("@every 5").unwrap_err(),
            "failed to parse duration @every 5: time: missing unit in duration \"5\""
        );
        assert!(validate_schedule("").is_err());
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn next_fire_times() {
        let utc = jiff::tz::TimeZone::UTC;
        let next = |sched: &str, after: &str| {
            parse(sched)
                .unwrap()
                .next_after(at(after), &utc)
                .map(|t| t.to_string())
        };
        assert_eq!(
            next("* * * * *", "2026-12-03T10:00:30Z").as_deref(),
            Some("2026-12-03T10:01:00Z")
        );
        assert_eq!(
            next("*/15 * * * *", "2026-12-03T10:01:00Z").as_deref(),
            Some("2026-12-03T10:15:00Z")
        );
        assert_eq!(
            next("0 3 * * *", "2026-12-03T03:00:00Z").as_deref(),
            Some("2026-12-04T03:00:00Z")
        );
        assert_eq!(
            next("@monthly", "2026-12-03T00:00:00Z").as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
        // Day of month and day of week both restricted: either matches (the 1st, or a Monday).
        assert_eq!(
            next("0 0 1 * mon", "2026-12-02T00:00:00Z").as_deref(),
            Some("2026-12-07T00:00:00Z")
        );
        // One restricted, the other `*`: both must match.
        assert_eq!(
            next("0 0 * * 0", "2026-12-03T00:00:00Z").as_deref(),
            Some("2026-12-06T00:00:00Z")
        );
        assert_eq!(next("0 0 30 2 *", "2026-12-03T00:00:00Z"), None);
        assert_eq!(
            next("@every 90s", "2026-12-03T00:00:00Z").as_deref(),
            Some("2026-12-03T00:01:30Z")
        );
        assert_eq!(
            parse("TZ=Europe/Berlin 0 9 * * *")
                .unwrap()
                .time_zone
                .as_deref(),
            Some("Europe/Berlin")
        );
    }

    #[test]
    fn time_zones_move_the_wall_clock() {
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        let s = parse("0 9 * * *").unwrap();
        // 09:00 in Berlin is 08:00 UTC in winter.
        assert_eq!(
            s.next_after(at("2026-12-03T07:00:00Z"), &berlin)
                .unwrap()
                .to_string(),
            "2026-12-03T08:00:00Z"
        );
    }
}

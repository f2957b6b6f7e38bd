//! Kubernetes resource quantities ("250m", "1.5", "128Mi", "1G", "1e3") to integers.

/// A quantity string that is not a valid Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {0:?}")]
pub struct QuantityError(pub String);

fn split(q: &str) -> Result<(f64, f64), QuantityError> {
    let q = q.trim();
    let err = || QuantityError(q.to_string());
    let idx = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(idx);
    let n: f64 = num.parse().map_err(|_| err())?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse::<i32>().map_err(|_| err())?),
        _ => return Err(err()),
    };
    if n < 0.0 || !n.is_finite() {
        return Err(err());
    }
    Ok((n, mult))
}

/// CPU in millicores.
pub fn parse_cpu_millis(q: &str) -> Result<i64, QuantityError> {
    let (n, m) = split(q)?;
    Ok((n * m * 1000.0).ceil() as i64)
}

/// Memory (or any byte quantity) in bytes.
pub fn parse_bytes(q: &str) -> Result<i64, QuantityError> {
    let (n, m) = split(q)?;
    Ok((n * m).ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu_millis("250m").unwrap(), 250);
        assert_eq!(parse_cpu_millis("1.5").unwrap(), 1500);
        assert_eq!(parse_cpu_millis("2").unwrap(), 2000);
        assert_eq!(parse_bytes("128Mi").unwrap(), 128 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("1e3").unwrap(), 1000);
        assert!(parse_bytes("12Xi").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("").is_err());
    }
}

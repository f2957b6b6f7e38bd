//! The shape of single values (names, paths, quantities). Each check says what is wrong with the
//! value in one line; the caller adds the field path. None of them looks at another field.

use std::net::{IpAddr, Ipv6Addr};
use std::ops::RangeInclusive;

use ipnet::IpNet;

/// The only directories `machine.files` may write under: extra configuration for Strake's own
/// services, never the OS's files.
pub const FILE_PREFIXES: [&str; 2] = ["/var/lib/strake/files/", "/etc/strake/extra/"];

const QUANTITY_SUFFIXES: [&str; 14] = [
    "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
];
/// 68 is the smallest MTU IPv4 allows; 9216 the largest jumbo frame common switches pass.
const MTU: RangeInclusive<u32> = 68..=9216;
/// Longest hostname the kernel accepts (`HOST_NAME_MAX`).
const HOSTNAME_MAX: usize = 64;
/// `IFNAMSIZ` less the terminating NUL.
const LINK_NAME_MAX: usize = 15;

fn ensure(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(message()) }
}

pub(crate) fn check_no_host_bits(net: &IpNet) -> Result<(), String> {
    ensure(net.trunc() == *net, || {
        format!("{net} has host bits set; the network is {}", net.trunc())
    })
}

pub(crate) fn check_hostname(h: &str) -> Result<(), String> {
    check_dns_name(h)?;
    ensure(h.len() <= HOSTNAME_MAX, || {
        format!("`{h}` is longer than {HOSTNAME_MAX} characters")
    })?;
    ensure(!h.bytes().any(|b| b.is_ascii_uppercase()), || {
        format!("`{h}` must be lowercase: it becomes the node name")
    })
}

/// An RFC 1123 name: dot-separated labels of letters, digits and `-`. A last label of digits only is
/// refused, so that a mistyped IPv4 address (`10.0.0.300`) is not taken for a name.
pub(crate) fn check_dns_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{name}` is not a DNS name: {why}"));
    if name.is_empty() || name.len() > 253 {
        return bad("it must be 1 to 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each dot-separated label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label may not start or end with '-'");
        }
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{name}` is neither an IP address nor a DNS name"));
    }
    Ok(())
}

pub(crate) fn check_dns_label(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    ensure(ok, || {
        format!("`{name}` is not a DNS label (1 to 63 of a-z, 0-9 and '-', not at either end)")
    })
}

/// An IP address or a DNS name.
pub(crate) fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    check_dns_name(host)
}

pub(crate) fn check_host_port(s: &str) -> Result<(), String> {
    let (host, _) = split_host_port(s)?;
    check_host(host)
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address is a host without port.
pub(crate) fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{s}` has no closing `]`"))?;
        if h.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{h}` is not an IPv6 address"));
        }
        match after {
            "" => (h, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err(format!("`{s}` has `{after}` after the address")),
            },
        }
    } else if s.parse::<Ipv6Addr>().is_ok() {
        (s, None)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{p}` in `{s}` is not a port number (1-65535)")),
        })
        .transpose()?;
    Ok((host, port))
}

/// An `https://` or `http://` URL whose host is checked; credentials are refused in it.
pub(crate) fn check_url(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("`{s}` must start with https:// or http://"))?;
    ensure(
        !s.chars().any(|ch| ch.is_whitespace() || ch.is_control()),
        || format!("`{s}` contains whitespace or control characters"),
    )?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    ensure(!authority.contains('@'), || {
        format!("`{s}`: credentials belong in machine.registries.config, not in the URL")
    })?;
    check_host_port(authority).map_err(|e| format!("`{s}`: {e}"))
}

pub(crate) fn check_mtu(mtu: u32) -> Result<(), String> {
    ensure(MTU.contains(&mtu), || {
        format!("{mtu} is not between 68 and 9216")
    })
}

pub(crate) fn check_link_name(name: &str) -> Result<(), String> {
    let ok = (1..=LINK_NAME_MAX).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ensure(ok, || {
        format!("`{name}` is not a link name (1 to {LINK_NAME_MAX} of letters, digits, '-_.')")
    })
}

/// Up to six `:`-separated octets of one or two hex digits, any of which may contain `*`; without
/// a `*`, exactly six.
pub(crate) fn check_mac_glob(mac: &str) -> Result<(), String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let octets_ok = parts.iter().all(|p| {
        (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit() || b == b'*')
    });
    let count_ok = if mac.contains('*') {
        parts.len() <= 6
    } else {
        parts.len() == 6
    };
    ensure(octets_ok && count_ok, || {
        format!("`{mac}` is not a MAC address such as 52:54:00:12:34:56 (octets may use `*`)")
    })
}

pub(crate) fn check_module_name(m: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&m.len())
        && m.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    ensure(ok, || {
        format!("`{m}` is not a module name (1 to 64 of a-z, 0-9, '_' and '-')")
    })
}

/// The shape of an IANA name: `/`-separated parts that start with a letter. Whether the zone exists
/// is for the image's zone database to say.
pub(crate) fn check_timezone(tz: &str) -> Result<(), String> {
    let ok = tz.len() <= 64
        && tz.split('/').all(|part| {
            part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+'))
        });
    ensure(ok, || {
        format!("`{tz}` is not a time zone name such as UTC or Europe/Paris")
    })
}

/// The message never repeats the token: it is a secret and errors end up in logs.
pub(crate) fn check_token(t: &str) -> Result<(), String> {
    let ok = t.split_once('.').is_some_and(|(id, secret)| {
        id.len() == 6
            && secret.len() == 16
            && id
                .bytes()
                .chain(secret.bytes())
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    ensure(ok, || {
        "not a bootstrap token: 6 and 16 of a-z and 0-9 joined by '.' (abcdef.0123456789abcdef)"
            .to_owned()
    })
}

pub(crate) fn check_ca_pin(pin: &str) -> Result<(), String> {
    let ok = pin
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    ensure(ok, || {
        format!("`{pin}` is not `sha256:` followed by 64 hex digits")
    })
}

/// One PEM block whose label ends with `kind` (`CERTIFICATE`; `PRIVATE KEY` also matches
/// `EC PRIVATE KEY`). The DER inside is checked by whoever uses it.
pub(crate) fn check_pem(text: &str, kind: &str) -> Result<(), String> {
    let text = text.trim();
    let label = text
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.split_once("-----"))
        .map(|(label, _)| label);
    match label {
        Some(label) if label.ends_with(kind) => {
            let end = format!("-----END {label}-----");
            ensure(text.contains(&end), || {
                format!("the PEM block has no `{end}` line")
            })
        }
        Some(label) => Err(format!("is a PEM `{label}`, not a `{kind}`")),
        None => Err(format!("is not PEM (expected `-----BEGIN {kind}-----`)")),
    }
}

pub(crate) fn check_disk_path(p: &str) -> Result<(), String> {
    let ok = p.strip_prefix("/dev/").is_some_and(|rest| {
        rest.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
    }) && !p.chars().any(|ch| ch.is_whitespace() || ch.is_control());
    ensure(ok, || {
        format!("`{p}` is not a device path such as /dev/vda")
    })
}

/// Absolute, without `.`, `..` or empty components, and under one of [`FILE_PREFIXES`].
pub(crate) fn check_file_path(p: &str) -> Result<(), String> {
    ensure(p.starts_with('/'), || {
        format!("`{p}` is not an absolute path")
    })?;
    let odd_part = p
        .split('/')
        .skip(1)
        .any(|part| part.is_empty() || part == "." || part == "..");
    ensure(!odd_part, || {
        format!("`{p}` has an empty, `.` or `..` component")
    })?;
    ensure(!p.chars().any(char::is_control), || {
        format!("`{p}` contains control characters")
    })?;
    ensure(
        FILE_PREFIXES.iter().any(|prefix| p.starts_with(prefix)),
        || format!("`{p}` is outside {}", FILE_PREFIXES.join(" and ")),
    )
}

/// `net.ipv4.ip_forward` or `net/ipv4/ip_forward`. Empty parts are refused, which also refuses
/// `..`: the name becomes a path under /proc/sys.
pub(crate) fn check_sysctl_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 256
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-' | b'/')
        })
        && name.split(['.', '/']).all(|part| !part.is_empty());
    ensure(ok, || {
        format!("`{name}` is not a sysctl name such as net.ipv4.ip_forward")
    })
}

/// A Kubernetes quantity without exponents: `500m`, `2`, `1.5Gi`.
pub(crate) fn check_quantity(v: &str) -> Result<(), String> {
    let split = v
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(v.len());
    let (number, suffix) = v.split_at(split);
    let number_ok = !number.is_empty()
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.matches('.').count() <= 1;
    ensure(number_ok && QUANTITY_SUFFIXES.contains(&suffix), || {
        format!("`{v}` is not a quantity such as 500m, 2 or 512Mi")
    })
}

pub(crate) fn check_quantity_or_percent(v: &str) -> Result<(), String> {
    match v.strip_suffix('%') {
        Some(n) => {
            let ok = n.parse::<f64>().is_ok_and(|x| (0.0..=100.0).contains(&x));
            ensure(ok, || format!("`{v}` is not a percentage from 0% to 100%"))
        }
        None => check_quantity(v),
    }
}

pub(crate) fn check_count(v: &str) -> Result<(), String> {
    ensure(v.parse::<u64>().is_ok(), || {
        format!("`{v}` is not a whole number")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_stay_under_the_allowed_directories() {
        for ok in ["/var/lib/strake/files/a", "/etc/strake/extra/dir/b.conf"] {
            assert_eq!(check_file_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "relative/path",
            "/etc/strake/extra/",
            "/etc/strake/extra",
            "/etc/strake/extra/../../shadow",
            "/etc/strake/extra/./a",
            "/etc/strake/extra//a",
            "/etc/strake/extrafile",
            "/var/lib/strake/files/a\n",
        ] {
            assert!(check_file_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_and_ports() {
        assert!(check_host("time.cloudflare.com").is_ok() && check_host("fd00::1").is_ok());
        assert!(check_host("10.0.0.300").is_err() && check_host("a..b").is_err());
        assert!(check_hostname("node-1").is_ok() && check_hostname("Node-1").is_err());
        assert_eq!(
            split_host_port("[fd00::1]:5000"),
            Ok(("fd00::1", Some(5000)))
        );
        assert_eq!(split_host_port("fd00::1"), Ok(("fd00::1", None)));
        assert_eq!(split_host_port("reg:80"), Ok(("reg", Some(80))));
        assert!(split_host_port("reg:0").is_err() && split_host_port("[x]:1").is_err());
        assert!(check_url("https://[fd00::1]:5000/v2").is_ok());
        assert!(check_url("ftp://a").is_err() && check_url("https://a b").is_err());
    }

    #[test]
    fn names_and_quantities() {
        assert!(
            check_mac_glob("52:54:00:*").is_ok() && check_mac_glob("52:54:00:12:34:56").is_ok()
        );
        assert!(check_mac_glob("52:54:00").is_err() && check_mac_glob("5254.0012.3456").is_err());
        assert!(check_timezone("UTC").is_ok() && check_timezone("America/Argentina/Salta").is_ok());
        assert!(check_timezone("").is_err() && check_timezone("Europe/../etc").is_err());
        assert!(check_quantity("1.5Gi").is_ok() && check_quantity("500m").is_ok());
        assert!(check_quantity("Gi").is_err() && check_quantity("1.2.3").is_err());
        assert!(check_quantity("1e3").is_err());
        assert!(check_quantity_or_percent("7.5%").is_ok());
        assert!(check_quantity_or_percent("101%").is_err());
        assert!(check_dns_label("lab-1").is_ok() && check_dns_label("Lab").is_err());
        assert!(check_ca_pin(&format!("sha256:{}", "0f".repeat(32))).is_ok());
        assert!(check_ca_pin("sha256:0f").is_err() && check_ca_pin(&"0f".repeat(32)).is_err());
        assert!(check_disk_path("/dev/disk/by-id/x").is_ok());
        assert!(check_disk_path("/dev/../etc").is_err() && check_disk_path("/dev/").is_err());
        assert!(check_sysctl_name("net/ipv4/conf/eth0.100/forwarding").is_ok());
        assert!(check_sysctl_name("net/../../etc").is_err() && check_sysctl_name("Net.x").is_err());
        assert!(check_token("abcdef.0123456789abcdef").is_ok() && check_token("abc.def").is_err());
    }
}

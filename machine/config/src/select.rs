//! Matching `machine.install.diskSelector` against what the kernel says about each disk.

use crate::DiskSelector;

/// What is known about one whole disk (from sysfs on a node).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskFacts {
    /// The kernel's name, `vda` or `nvme0n1`.
    pub name: String,
    pub bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
}

impl DiskFacts {
    /// `vda (4096 MiB, model "QEMU HARDDISK", serial "x")`, for messages.
    pub fn describe(&self) -> String {
        let mut out = format!("{} ({} MiB", self.name, self.bytes >> 20);
        for (what, v) in [
            ("model", &self.model),
            ("serial", &self.serial),
            ("wwn", &self.wwn),
        ] {
            if let Some(v) = v {
                out.push_str(&format!(", {what} {v:?}"));
            }
        }
        out.push(')');
        out
    }
}

impl DiskSelector {
    /// Whether `disk` meets every criterion the selector sets. A criterion the disk cannot
    /// answer (no model, say) does not match.
    pub fn matches(&self, disk: &DiskFacts) -> bool {
        fn text(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim)
        }
        self.size
            .as_ref()
            .is_none_or(|s| s.get().is_some_and(|m| m.matches(disk.bytes)))
            && self
                .model
                .as_deref()
                .is_none_or(|p| text(&disk.model).is_some_and(|m| glob(p.trim(), m)))
            && self
                .serial
                .as_deref()
                .is_none_or(|s| text(&disk.serial) == Some(s.trim()))
            && self
                .wwn
                .as_deref()
                .is_none_or(|w| text(&disk.wwn).is_some_and(|d| d.eq_ignore_ascii_case(w.trim())))
    }

    /// The first matching disk in name order (as Talos picks), if any.
    pub fn select<'a>(&self, disks: &'a [DiskFacts]) -> Option<&'a DiskFacts> {
        let mut matching: Vec<&DiskFacts> = disks.iter().filter(|d| self.matches(d)).collect();
        matching.sort_by(|a, b| a.name.cmp(&b.name));
        matching.first().copied()
    }
}

/// Shell-style matching of `*` (any run) and `?` (any one character); everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently standing for.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Parsed;

    fn disk(name: &str, gib: u64, model: Option<&str>, serial: Option<&str>) -> DiskFacts {
        DiskFacts {
            name: name.into(),
            bytes: gib << 30,
            model: model.map(Into::into),
            serial: serial.map(Into::into),
            wwn: None,
        }
    }

    #[test]
    fn globs_match_like_a_shell() {
        for (p, t) in [
            ("*", ""),
            ("*", "abc"),
            ("a*c", "abbbc"),
            ("a?c", "abc"),
            ("*SSD*", "Samsung SSD 980"),
            ("a*b*c", "axxbyyc"),
        ] {
            assert!(glob(p, t), "{p} ~ {t}");
        }
        for (p, t) in [
            ("a?c", "ac"),
            ("abc", "abd"),
            ("*SSD", "SSD 980"),
            ("", "x"),
        ] {
            assert!(!glob(p, t), "{p} !~ {t}");
        }
    }

    #[test]
    fn every_criterion_must_hold_and_the_first_by_name_wins() {
        let disks = [
            disk("vdb", 100, None, Some("data-1")),
            disk("sda", 500, Some("Samsung SSD 870  "), Some("S5Y1")),
            disk("nvme0n1", 1000, Some("Samsung SSD 980"), Some("S6A2")),
        ];
        let sel = DiskSelector {
            size: Some(Parsed::new(">= 200GB")),
            model: Some("Samsung SSD*".into()),
            ..DiskSelector::default()
        };
        assert_eq!(sel.select(&disks).map(|d| d.name.as_str()), Some("nvme0n1"));
        let sel = DiskSelector {
            serial: Some("data-1".into()),
            ..DiskSelector::default()
        };
        assert_eq!(sel.select(&disks).map(|d| d.name.as_str()), Some("vdb"));
        // A model asked for and a disk that reports none: no match.
        let sel = DiskSelector {
            model: Some("*".into()),
            size: Some(Parsed::new("<= 150GB")),
            ..DiskSelector::default()
        };
        assert_eq!(sel.select(&disks), None);
        assert_eq!(
            disks[1].describe(),
            "sda (512000 MiB, model \"Samsung SSD 870  \", serial \"S5Y1\")"
        );
    }
}

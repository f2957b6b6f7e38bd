//! The node's pod addresses: one file per address in use, `<dir>/<address>`, holding its
//! owner (the pod's uid). Creating the file with `O_EXCL` is the allocation, so two callers
//! never get one address; the files outlive the agent, so a restart never hands out an address
//! still held. Allocation goes round from the last address handed out (`<dir>/last`), so a
//! released address is not reused at once.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;

use crate::NetError;

const LAST: &str = "last";

pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Net,
    /// Serializes this process's allocations (the files guard against everyone else).
    lock: Mutex<()>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetError {
    let path = path.to_owned();
    move |source| NetError::Io { op, path, source }
}

impl Ipam {
    /// The allocator of `cidr`, keeping its state in `<root>/<network>_<prefix>`.
    pub fn open(root: &Path, cidr: Ipv4Net) -> Result<Self, NetError> {
        if cidr.prefix_len() > 30 {
            return Err(NetError::TooSmall(cidr));
        }
        let cidr = cidr.trunc();
        let dir = root.join(format!("{}_{}", cidr.network(), cidr.prefix_len()));
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        Ok(Self {
            dir,
            cidr,
            lock: Mutex::new(()),
        })
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The pods' gateway: the first address of the range, held by the node's bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.cidr)
    }

    /// Every address in use, with its owner.
    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, String>, NetError> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("listing", &self.dir))? {
            let entry = entry.map_err(io("listing", &self.dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
            out.insert(ip, owner.trim().to_string());
        }
        Ok(out)
    }

    /// An address for `owner`: the one it already holds, or the next free one.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, NetError> {
        if owner.is_empty() || owner.contains(['\n', '/']) {
            return Err(NetError::BadOwner(owner.to_string()));
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((ip, _)) = self.allocations()?.into_iter().find(|(_, o)| o == owner) {
            return Ok(ip);
        }
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.cidr.broadcast()) - 1;
        let after = std::fs::read_to_string(self.dir.join(LAST))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|a| (first..=last).contains(a))
            .unwrap_or(last);
        let span = last - first + 1;
        for step in 1..=span {
            let ip = Ipv4Addr::from(first + (after - first + step) % span);
            let path = self.dir.join(ip.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(io("writing", &path))?;
                    let marker = self.dir.join(LAST);
                    std::fs::write(&marker, ip.to_string()).map_err(io("writing", &marker))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("creating", &path)(e)),
            }
        }
        Err(NetError::Exhausted(self.cidr))
    }

    /// Frees every address `owner` holds; returns them.
    pub fn release(&self, owner: &str) -> Result<Vec<Ipv4Addr>, NetError> {
        self.release_where(|o| o == owner)
    }

    /// Frees every address whose owner `keep` refuses (and those whose owner was never
    /// written); returns them.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<Ipv4Addr>, NetError> {
        self.release_where(|o| o.is_empty() || !keep(o))
    }

    fn release_where(&self, release: impl Fn(&str) -> bool) -> Result<Vec<Ipv4Addr>, NetError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut freed = Vec::new();
        for (ip, owner) in self.allocations()? {
            if release(&owner) {
                let path = self.dir.join(ip.to_string());
                match std::fs::remove_file(&path) {
                    Ok(()) => freed.push(ip),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("removing", &path)(e)),
                }
            }
        }
        Ok(freed)
    }
}

/// The first address of `cidr`, the pods' gateway.
pub(crate) fn gateway(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &Path, cidr: &str) -> Ipam {
        Ipam::open(dir, cidr.parse().unwrap()).unwrap()
    }

    #[test]
    fn hands_out_each_address_once_and_round_robin() {
        let tmp = tempfile::tempdir().unwrap();
        let a = ipam(tmp.path(), "10.244.3.0/29");
        assert_eq!(a.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        let first = a.allocate("pod-a").unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 244, 3, 2));
        assert_eq!(a.allocate("pod-a").unwrap(), first, "idempotent per owner");
        let b = a.allocate("pod-b").unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 244, 3, 3));
        assert_eq!(a.release("pod-a").unwrap(), vec![first]);
        // A freed address is not the next one handed out.
        assert_eq!(a.allocate("pod-c").unwrap(), Ipv4Addr::new(10, 244, 3, 4));
        // A restarted agent sees the same state.
        let again = ipam(tmp.path(), "10.244.3.0/29");
        assert_eq!(again.allocate("pod-b").unwrap(), b);
        for owner in ["d", "e"] {
            again.allocate(owner).unwrap();
        }
        // .2 was freed: it is the only one left (.7 is the broadcast address).
        assert_eq!(again.allocate("g").unwrap(), Ipv4Addr::new(10, 244, 3, 2));
        let err = again.allocate("h").unwrap_err();
        assert_eq!(err.to_string(), "no free pod address left in 10.244.3.0/29");
        let owners: Vec<String> = again.allocations().unwrap().into_values().collect();
        assert_eq!(owners, ["g", "pod-b", "pod-c", "d", "e"]);
    }

    #[test]
    fn sweeps_owners_that_are_gone_and_refuses_bad_input() {
        let tmp = tempfile::tempdir().unwrap();
        let a = ipam(tmp.path(), "10.1.0.0/24");
        let x = a.allocate("x").unwrap();
        a.allocate("y").unwrap();
        // An allocation that crashed before its owner was written.
        std::fs::write(tmp.path().join("10.1.0.0_24/10.1.0.9"), "").unwrap();
        let mut freed = a.retain(|o| o == "x").unwrap();
        freed.sort();
        assert_eq!(
            freed,
            [Ipv4Addr::new(10, 1, 0, 3), Ipv4Addr::new(10, 1, 0, 9)]
        );
        assert_eq!(
            a.allocations().unwrap().into_keys().collect::<Vec<_>>(),
            [x]
        );
        assert!(matches!(a.allocate("a/b"), Err(NetError::BadOwner(_))));
        assert!(matches!(a.allocate(""), Err(NetError::BadOwner(_))));
        assert!(matches!(
            Ipam::open(tmp.path(), "10.1.0.0/31".parse().unwrap()),
            Err(NetError::TooSmall(_))
        ));
    }
}

//! The control planes' shared virtual IP, held by the store's leader while a quorum backs it:
//! added to the link carrying this node's address and announced by gratuitous ARP when this
//! node takes it (and every few seconds while it holds it), removed as soon as it stops
//! leading or loses its quorum's acknowledgements. Writes sent to the VIP thus reach the
//! leader without a forwarding hop, and a partitioned old leader gives the address up.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use strake_store::Store;

/// How often leadership is looked at.
const TICK: Duration = Duration::from_millis(100);
/// A leader that has not heard from a quorum for this long lets the address go (below the
/// clustered election timeout, so it is gone before another node can be elected).
const QUORUM_ACK_WITHIN: Duration = Duration::from_millis(900);
/// How often a holder announces the address again.
const REANNOUNCE: Duration = Duration::from_secs(5);

/// The link that carries `ip`.
fn link_of(ip: IpAddr) -> Option<String> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let v4 = a.address?.as_sockaddr_in()?.ip();
        (IpAddr::V4(v4) == ip).then(|| a.interface_name.clone())
    })
}

/// Holds `vip` on the link carrying `node_ip` while this node leads the store.
pub fn spawn(store: Store, vip: Ipv4Addr, node_ip: IpAddr) {
    tokio::spawn(async move {
        let Some(link) = link_of(node_ip) else {
            tracing::error!(%vip, %node_ip, "no link carries this node's address: the virtual IP is not held here");
            return;
        };
        tracing::info!(%vip, link, "holding the virtual IP while this node leads the store");
        let mut held = false;
        let mut announced = Instant::now();
        loop {
            let hold = store.leads_with_quorum(QUORUM_ACK_WITHIN);
            if hold && (!held || announced.elapsed() >= REANNOUNCE) {
                let l = link.clone();
                let taking = !held;
                let done = tokio::task::spawn_blocking(move || {
                    if taking {
                        strake_net::vip::add(&l, vip)?;
                    }
                    strake_net::vip::announce(&l, vip)
                })
                .await;
                match done {
                    Ok(Ok(())) => {
                        if taking {
                            tracing::info!(%vip, link, "took the virtual IP");
                        }
                        held = true;
                        announced = Instant::now();
                    }
                    Ok(Err(e)) => tracing::warn!(%vip, error = %e, "taking the virtual IP"),
                    Err(e) => tracing::warn!(%vip, error = %e, "taking the virtual IP panicked"),
                }
            } else if !hold && held {
                let l = link.clone();
                match tokio::task::spawn_blocking(move || strake_net::vip::remove(&l, vip)).await {
                    Ok(Ok(())) => {
                        tracing::info!(%vip, link, "gave up the virtual IP");
                        held = false;
                    }
                    Ok(Err(e)) => tracing::warn!(%vip, error = %e, "giving up the virtual IP"),
                    Err(e) => tracing::warn!(%vip, error = %e, "giving up the virtual IP panicked"),
                }
            }
            tokio::time::sleep(TICK).await;
        }
    });
}

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
/// A leader takes the address once a quorum acknowledged it within this long.
const TAKE_WITHIN: Duration = Duration::from_millis(800);
/// A holder lets the address go once no quorum acknowledged it for this long. Longer than
/// [`TAKE_WITHIN`], so that a leader whose followers answer late under load does not drop
/// and retake it (each time a gap for its clients); about when the others, who stopped
/// hearing from a leader cut off from them, elect a new one (after 1.0-1.3 s and an
/// election). The new holder announces the address on taking it and again a second later,
/// so the last announcement is the new holder's.
const KEEP_WITHIN: Duration = Duration::from_millis(1800);
/// How often a holder announces the address again.
const REANNOUNCE: Duration = Duration::from_secs(5);
/// When a new holder announces it the second time.
const SECOND_ANNOUNCE: Duration = Duration::from_secs(1);

/// Stops the holder of a virtual IP ([`spawn`]).
pub struct Holder {
    stop: tokio::sync::watch::Sender<bool>,
    stopped: tokio::sync::oneshot::Receiver<()>,
}

impl Holder {
    /// Gives the address up (if held) and stops holding it, whatever the store says; waits
    /// up to a second for that.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stopped).await;
    }
}

/// The link that carries `ip`.
fn link_of(ip: IpAddr) -> Option<String> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let v4 = a.address?.as_sockaddr_in()?.ip();
        (IpAddr::V4(v4) == ip).then(|| a.interface_name.clone())
    })
}

/// Holds `vip` on the link carrying `node_ip` while this node leads the store, until the
/// returned [`Holder`] stops it.
pub fn spawn(store: Store, vip: Ipv4Addr, node_ip: IpAddr) -> Holder {
    let (stop, mut stopping) = tokio::sync::watch::channel(false);
    let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Some(link) = link_of(node_ip) else {
            tracing::error!(%vip, %node_ip, "no link carries this node's address: the virtual IP is not held here");
            return;
        };
        tracing::info!(%vip, link, "holding the virtual IP while this node leads the store");
        let mut held = false;
        let mut announced = Instant::now();
        loop {
            if *stopping.borrow_and_update() {
                if held {
                    let l = link.clone();
                    match tokio::task::spawn_blocking(move || strake_net::vip::remove(&l, vip))
                        .await
                    {
                        Ok(Ok(())) => {
                            tracing::info!(%vip, link, "gave up the virtual IP: stopping")
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(%vip, error = %e, "giving up the virtual IP while stopping")
                        }
                        Err(e) => {
                            tracing::warn!(%vip, error = %e, "giving up the virtual IP panicked")
                        }
                    }
                }
                let _ = stopped_tx.send(());
                return;
            }
            let hold = store.leads_with_quorum(if held { KEEP_WITHIN } else { TAKE_WITHIN });
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
                        held = true;
                        announced = Instant::now();
                        if taking {
                            tracing::info!(%vip, link, "took the virtual IP");
                            // The next announcement a second from now, not in five.
                            announced = announced
                                .checked_sub(REANNOUNCE - SECOND_ANNOUNCE)
                                .unwrap_or(announced);
                        }
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
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                _ = stopping.changed() => {}
            }
        }
    });
    Holder { stop, stopped }
}

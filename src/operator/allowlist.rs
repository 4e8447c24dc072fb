//! The operator source allowlist: a pure decision taken before any byte is read.
//!
//! Architecture invariant: the operator listener reads nothing from a connection until
//! [`Allowlist::admit`] returned an [`AllowedPeer`] for its source address, and the TLS
//! acceptor takes that value, so a path that skips the check does not compile.

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone)]
pub struct Allowlist {
    nets: Vec<IpNet>,
}

/// A peer whose canonical source address is inside the allowlist. Only
/// [`Allowlist::admit`] builds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedPeer {
    addr: IpAddr,
    port: u16,
}

impl AllowedPeer {
    pub fn ip(&self) -> IpAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Why a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The canonical address that was checked.
    pub canonical: IpAddr,
}

impl Allowlist {
    pub fn new(nets: Vec<IpNet>) -> Allowlist {
        Allowlist { nets }
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Decide on a source address. IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is canonicalised to
    /// IPv4 first, so a dual-stack listener cannot be used to step around an IPv4 rule.
    pub fn admit(&self, peer: SocketAddr) -> Result<AllowedPeer, Refused> {
        let canonical = peer.ip().to_canonical();
        if self.nets.iter().any(|n| n.contains(&canonical)) {
            Ok(AllowedPeer {
                addr: canonical,
                port: peer.port(),
            })
        } else {
            Err(Refused { canonical })
        }
    }
}

/// The same decision written the slow, obvious way (for property tests and fuzzing).
pub fn naive_admits(nets: &[IpNet], peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[0..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
                let o = v6.octets();
                IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                IpAddr::V6(v6)
            }
        }
        v4 => v4,
    };
    for net in nets {
        match (net, peer) {
            (IpNet::V4(n), IpAddr::V4(a)) => {
                let bits = n.prefix_len() as u32;
                let mask: u32 = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                if u32::from(a) & mask == u32::from(n.network()) & mask {
                    return true;
                }
            }
            (IpNet::V6(n), IpAddr::V6(a)) => {
                let bits = n.prefix_len() as u32;
                let mask: u128 = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                if u128::from(a) & mask == u128::from(n.network()) & mask {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn list(v: &[&str]) -> Allowlist {
        Allowlist::new(v.iter().map(|s| IpNet::from_str(s).unwrap()).collect())
    }

    #[test]
    fn mapped_ipv6_is_canonicalised() {
        let a = list(&["127.0.0.1/32", "::1/128"]);
        assert!(a.admit("127.0.0.1:5".parse().unwrap()).is_ok());
        assert!(a.admit("[::ffff:127.0.0.1]:5".parse().unwrap()).is_ok());
        assert!(a.admit("[::1]:5".parse().unwrap()).is_ok());
        let r = a
            .admit("[::ffff:127.0.0.2]:5".parse().unwrap())
            .unwrap_err();
        assert_eq!(r.canonical.to_string(), "127.0.0.2");
        assert!(a.admit("127.0.0.2:5".parse().unwrap()).is_err());
        // IPv4-compatible (deprecated) and the unspecified address are not IPv4.
        assert!(a.admit("[::127.0.0.1]:5".parse().unwrap()).is_err());
        assert!(list(&["0.0.0.0/32"])
            .admit("[::]:5".parse().unwrap())
            .is_err());
    }

    fn arb_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32)
                .prop_map(|(a, p)| IpNet::V4(ipnet::Ipv4Net::new(a.into(), p).unwrap().trunc())),
            (any::<u128>(), 0u8..=128)
                .prop_map(|(a, p)| IpNet::V6(ipnet::Ipv6Net::new(a.into(), p).unwrap().trunc())),
        ]
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
            any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
            any::<u32>().prop_map(|a| IpAddr::V6(std::net::Ipv4Addr::from(a).to_ipv6_mapped())),
        ]
    }

    proptest! {
        #[test]
        fn allowlist_matches_naive_reference(nets in proptest::collection::vec(arb_net(), 0..6), ip in arb_ip()) {
            let fast = Allowlist::new(nets.clone()).admit(SocketAddr::new(ip, 1)).is_ok();
            prop_assert_eq!(fast, naive_admits(&nets, ip));
        }
    }
}

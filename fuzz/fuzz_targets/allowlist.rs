#![no_main]
//! Any networks and any peer (IPv4, IPv6, IPv4-mapped IPv6): the allowlist against two
//! naive references.
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Arbitrary)]
enum Peer {
    V4(u32),
    V6(u128),
    Mapped(u32),
    Compatible(u32),
}

#[derive(Debug, Arbitrary)]
struct Input {
    nets: Vec<(bool, u128, u8)>,
    peer: Peer,
}

fuzz_target!(|input: Input| {
    let nets: Vec<_> = input
        .nets
        .iter()
        .take(16)
        .map(|&(v6, bits, p)| palisade_fuzz::net_of(v6, bits, p))
        .collect();
    let peer = match input.peer {
        Peer::V4(a) => IpAddr::V4(Ipv4Addr::from(a)),
        Peer::V6(a) => IpAddr::V6(Ipv6Addr::from(a)),
        Peer::Mapped(a) => IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped()),
        Peer::Compatible(a) => IpAddr::V6(Ipv4Addr::from(a).to_ipv6_compatible()),
    };
    palisade_fuzz::check_allowlist(&nets, peer);
});

//! PROXY protocol version 2 (the binary form, HAProxy's `proxy-protocol.txt` section 2.2): on
//! raw TCP routes that ask for it, the edge writes this header as the first bytes to the
//! origin stream, so that the app behind the tunnel learns the real client address and port
//! (it otherwise sees only the edge's tunnel address).
//!
//! Only the `PROXY` command over TCP is produced: TCP4 when both addresses are IPv4 (IPv4-mapped
//! IPv6 addresses count as IPv4), TCP6 otherwise (an IPv4 address is then written mapped).
//! No TLVs are added.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature that starts every v2 header.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Version 2 (high nibble), command PROXY (low nibble 1).
const VERSION_PROXY: u8 = 0x21;
/// Address family INET (high nibble 1), transport STREAM (low nibble 1).
const TCP4: u8 = 0x11;
/// Address family INET6 (high nibble 2), transport STREAM (low nibble 1).
const TCP6: u8 = 0x21;

pub use kokoa_model::ProxyProtocol;

/// The v2 header for a connection from `client` accepted on `local` (the edge's listening
/// address as the client reached it). 28 bytes for TCP4, 52 for TCP6.
pub fn v2_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = (client.ip().to_canonical(), local.ip().to_canonical());
    let mut header = Vec::with_capacity(52);
    header.extend_from_slice(&SIGNATURE);
    header.push(VERSION_PROXY);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            header.push(TCP4);
            header.extend_from_slice(&12u16.to_be_bytes());
            header.extend_from_slice(&src.octets());
            header.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            header.push(TCP6);
            header.extend_from_slice(&36u16.to_be_bytes());
            header.extend_from_slice(&v6(src).octets());
            header.extend_from_slice(&v6(dst).octets());
        }
    }
    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&local.port().to_be_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp4_header_bytes_match_the_spec() {
        let header = v2_header(
            "192.0.2.10:51000".parse().unwrap(),
            "198.51.100.7:4001".parse().unwrap(),
        );
        let expected: [u8; 28] = [
            // "\r\n\r\n\0\r\nQUIT\n"
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            0x21, // version 2, PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0C, // 12 address bytes follow
            192, 0, 2, 10, // source address
            198, 51, 100, 7, // destination address
            0xC7, 0x38, // source port 51000
            0x0F, 0xA1, // destination port 4001
        ];
        assert_eq!(header, expected);
    }

    #[test]
    fn tcp6_header_bytes_match_the_spec() {
        let header = v2_header(
            "[2001:db8::1]:443".parse().unwrap(),
            "[2001:db8::2]:8443".parse().unwrap(),
        );
        assert_eq!(header.len(), 16 + 36);
        assert_eq!(&header[..12], &SIGNATURE);
        assert_eq!(header[12..16], [0x21, 0x21, 0x00, 0x24]);
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        src[15] = 1;
        let mut dst = src;
        dst[15] = 2;
        assert_eq!(header[16..32], src);
        assert_eq!(header[32..48], dst);
        assert_eq!(header[48..52], [0x01, 0xBB, 0x20, 0xFB]);
    }

    #[test]
    fn mapped_addresses_are_tcp4_and_mixed_families_are_tcp6() {
        let header = v2_header(
            "[::ffff:192.0.2.10]:1".parse().unwrap(),
            "[::ffff:127.0.0.1]:2".parse().unwrap(),
        );
        assert_eq!(header[13], TCP4);
        assert_eq!(header[16..20], [192, 0, 2, 10]);
        let header = v2_header(
            "192.0.2.10:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
        );
        assert_eq!(header[13], TCP6);
        assert_eq!(
            header[16..32],
            "::ffff:192.0.2.10"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}

//! Writes the tunnel seed corpus (`corpus/tunnel_datagram/`): inputs that a real boringtun
//! peer holding the harness's fixed key would send, so the fuzzer starts past the MAC checks.
//!
//! `cargo run -p kokoa-fuzz --example seeds` (from the repository root).

use std::path::Path;

use boringtun::noise::TunnResult;
use kokoa_fuzz::tunnel::{op, peer_tunn, record, tcp_packet, ACCEPT_PORT, CORE_ADDR, PEER_ADDR};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;

fn syn(port: u16) -> Vec<u8> {
    tcp_packet(PEER_ADDR, CORE_ADDR, 40000, port, 1000, 0, SYN, &[])
}

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/tunnel_datagram");
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, records: &[Vec<u8>]| std::fs::write(dir.join(name), records.concat());

    // A real handshake initiation, as boringtun makes it.
    let mut buf = vec![0u8; 2048];
    let init = match peer_tunn().format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        _ => panic!("boringtun made no handshake initiation"),
    };
    write("handshake_initiation", &[record(op::DATAGRAM, &init)])?;
    write(
        "handshake_from_other_address",
        &[record(op::DATAGRAM_OTHER, &init)],
    )?;

    // A whole HTTP exchange: SYN (behind a handshake), ACK, request, FIN.
    let request = [
        &[PSH_ACK][..],
        b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    ]
    .concat();
    write(
        "stream_request",
        &[
            record(op::INNER, &syn(ACCEPT_PORT)),
            record(op::TCP_REPLY, &[ACK]),
            record(op::TCP_REPLY, &request),
            record(op::TCP_REPLY, &[FIN_ACK]),
            record(op::ADVANCE, &[]),
        ],
    )?;
    // A SYN to a port the core does not accept: answered with RST.
    write("syn_closed_port", &[record(op::INNER, &syn(22))])?;
    // An inner source outside the peer's allowed IPs: dropped.
    let spoofed = tcp_packet(
        "10.100.9.9".parse().expect("addr"),
        CORE_ADDR,
        40000,
        ACCEPT_PORT,
        1,
        0,
        SYN,
        &[],
    );
    write("spoofed_source", &[record(op::INNER, &spoofed)])?;
    // Replays of an authenticated datagram, exact and with a flipped byte, then timers.
    let mut advance = record(op::ADVANCE, &[]);
    advance[1..3].copy_from_slice(&1000u16.to_le_bytes());
    write(
        "replay",
        &[
            record(op::INNER, &syn(ACCEPT_PORT)),
            record(op::REPLAY, &[]),
            record(op::REPLAY, &[0, 0, 0, 0, 1]),
            advance,
        ],
    )?;
    // Short and unknown-index messages of each type (junk).
    let mut data_msg = vec![4, 0, 0, 0, 0x07, 0x00, 0x00, 0x00];
    data_msg.extend_from_slice(&[0u8; 40]);
    write(
        "junk",
        &[
            record(op::DATAGRAM, &[1, 0, 0]),
            record(op::DATAGRAM, &data_msg),
            record(op::DATAGRAM, &[3, 0, 0, 0, 1, 2, 3, 4]),
            record(op::DATAGRAM, &[2; 92]),
        ],
    )?;
    println!("wrote seeds to {}", dir.display());
    Ok(())
}

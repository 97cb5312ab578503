//! Compiles `kokoa/v1/control.proto` with protox (a pure-Rust protobuf compiler, so building
//! Kokoa never needs a system `protoc`) and generates prost messages and tonic client/server code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "kokoa/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

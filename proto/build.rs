//! Generates the gRPC stubs. protoc comes from `protoc-bin-vendored`, so a fresh
//! machine needs no system package to build Strata.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&["proto/strata.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/strata.proto");
    Ok(())
}

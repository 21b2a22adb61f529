//! Compiles `proto/portal/<service>/v1/*.proto` with protox (no system `protoc`), generates the
//! Rust code with tonic-prost-build, and writes one descriptor set per service for reflection,
//! so each server lists only its own service.

use std::path::{Path, PathBuf};
use std::{env, fs};

use prost::Message;

const SERVICES: [&str; 4] = ["identity", "consent", "approval", "transfer"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("../../proto").canonicalize()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut all_files = Vec::new();
    for service in SERVICES {
        let files = proto_files(&proto_root.join("portal").join(service).join("v1"))?;
        for file in &files {
            println!("cargo:rerun-if-changed={}", file.display());
        }
        let set = protox::compile(&files, [&proto_root])?;
        fs::write(
            out_dir.join(format!("portal.{service}.v1.bin")),
            set.encode_to_vec(),
        )?;
        all_files.extend(files);
    }

    let set = protox::compile(&all_files, [&proto_root])?;
    tonic_prost_build::configure()
        // Methods a later issue implements answer UNIMPLEMENTED until then.
        .generate_default_stubs(true)
        .compile_fds(set)?;
    Ok(())
}

fn proto_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();
    Ok(files)
}

//! The `transfer-verify` binary on files, as an auditor runs it: exit 0 and "verified" for an
//! honest export, exit 1 naming the altered record otherwise, exit 2 for unreadable input.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::process::Command;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use portal_proto::transfer::v1::{Checkpoint, TransferRecord};
use prost::Message;
use transfer_verify::{recompute, signed_bytes, tree_root, write_records};

fn records(n: i64) -> Vec<TransferRecord> {
    (0..n)
        .map(|sequence| {
            let mut record = TransferRecord {
                name: format!("transferRecords/0190f7a0-0000-7000-8000-{sequence:012}"),
                sequence,
                subject: "tenants/a/users/b".into(),
                ..TransferRecord::default()
            };
            record.leaf_hash = recompute(&record).to_vec();
            record
        })
        .collect()
}

fn signed(records: &[TransferRecord], key: &SigningKey) -> Checkpoint {
    let leaves: Vec<_> = records.iter().map(recompute).collect();
    let mut checkpoint = Checkpoint {
        tree_size: records.len() as i64,
        root_hash: tree_root(&leaves).to_vec(),
        time: Some(prost_types::Timestamp {
            seconds: 1_795_000_000,
            nanos: 0,
        }),
        key_id: "k1".into(),
        signature: Vec::new(),
        origin: "portal-transfer/jp".into(),
    };
    checkpoint.signature = key.sign(&signed_bytes(&checkpoint)).to_bytes().to_vec();
    checkpoint
}

fn run(dir: &std::path::Path, key: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_transfer-verify"))
        .arg("check")
        .arg("--records")
        .arg(dir.join("records.bin"))
        .arg("--checkpoint")
        .arg(dir.join("checkpoint.bin"))
        .args(["--key", key])
        .output()
        .unwrap()
}

#[test]
fn the_cli_verifies_an_honest_export_and_names_an_altered_record() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
    let mut log = records(6);
    let checkpoint = signed(&log, &key);
    std::fs::write(
        dir.path().join("checkpoint.bin"),
        checkpoint.encode_to_vec(),
    )
    .unwrap();
    std::fs::write(dir.path().join("records.bin"), write_records(&log)).unwrap();

    let honest = run(dir.path(), &public);
    assert_eq!(honest.status.code(), Some(0), "{honest:?}");
    assert!(String::from_utf8_lossy(&honest.stdout).contains("verified: 6 records"));

    log[4].subject = "tenants/a/users/c".into();
    std::fs::write(dir.path().join("records.bin"), write_records(&log)).unwrap();
    let altered = run(dir.path(), &public);
    assert_eq!(altered.status.code(), Some(1), "{altered:?}");
    let stderr = String::from_utf8_lossy(&altered.stderr);
    assert!(
        stderr.contains(&log[4].name) && stderr.contains("sequence 4"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("checkpoint.bin"), b"not a checkpoint").unwrap();
    assert_eq!(run(dir.path(), &public).status.code(), Some(2));
}

#[test]
fn fetch_refuses_to_send_the_token_where_tls_settings_and_scheme_disagree() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("auditor.token");
    std::fs::write(&token, "a-token").unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, "not read").unwrap();
    let fetch = |endpoint: &str, ca_file: Option<&std::path::Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_transfer-verify"));
        command
            .args(["fetch", "--endpoint", endpoint, "--token-file"])
            .arg(&token)
            .arg("--out")
            .arg(dir.path().join("out"));
        if let Some(ca_file) = ca_file {
            command.arg("--ca-file").arg(ca_file);
        }
        command.output().unwrap()
    };
    // A CA for a plaintext endpoint would be ignored, and the token sent in the clear.
    for output in [
        fetch("http://127.0.0.1:9", Some(&ca)),
        fetch("https://127.0.0.1:9", None),
    ] {
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("--ca-file"), "{said}");
    }
    assert!(!dir.path().join("out").exists());
}

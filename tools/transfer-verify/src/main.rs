//! `transfer-verify`: an auditor's check of the transfer log that trusts nothing the operator
//! says. `fetch` downloads an export, the latest checkpoint and its key (and a consistency
//! proof from an older checkpoint); `check` and `consistency` verify those files offline.
//! Exit status: 0 verified, 1 the log does not verify (the message names what failed), 2 the
//! files or the service could not be read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portal_proto::transfer::v1::affiliate_transfer_service_client::AffiliateTransferServiceClient;
use portal_proto::transfer::v1::{
    Checkpoint, ConsistencyProof, ExportTransferRecordsRequest, GetCheckpointRequest,
    GetConsistencyProofRequest, ListSigningKeysRequest,
};
use prost::Message;
use tokio_stream::StreamExt;
use transfer_verify::{parse_key, read_records, verify_consistency, verify_export, write_records};

#[derive(Parser)]
#[command(about = "Verify an exported transfer log against its signed checkpoints")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download `records.bin`, `checkpoint.bin` and `key.txt` (and, with --older,
    /// `consistency.bin`) into a folder.
    Fetch {
        /// The transfer service, e.g. `http://127.0.0.1:50054` (or `https://...` with --ca-file).
        #[arg(long)]
        endpoint: String,
        /// A file holding an AUDITOR (or OPERATOR) token.
        #[arg(long)]
        token_file: PathBuf,
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
        /// A checkpoint kept from earlier: also fetch the proof that it is a prefix of the new one.
        #[arg(long)]
        older: Option<PathBuf>,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Check every record's leaf hash, the tree root and the checkpoint's signature.
    Check {
        #[arg(long)]
        records: PathBuf,
        #[arg(long)]
        checkpoint: PathBuf,
        /// The public key (base64 of 32 bytes), or a file holding it.
        #[arg(long)]
        key: String,
    },
    /// Check that an older checkpoint's log is a prefix of a newer one's.
    Consistency {
        #[arg(long)]
        older: PathBuf,
        #[arg(long)]
        newer: PathBuf,
        #[arg(long)]
        proof: PathBuf,
        #[arg(long)]
        key: String,
    },
}

/// TLS to the transfer service (an `https://` endpoint): the CA that signs its certificate, and
/// for mutual TLS the auditor's own certificate and key (PEM files).
#[derive(clap::Args)]
struct TlsArgs {
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires_all = ["key_file", "ca_file"])]
    cert_file: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
}

impl TlsArgs {
    fn settings(self) -> portal_platform::tls::TlsSettings {
        portal_platform::tls::TlsSettings {
            cert_file: self.cert_file,
            key_file: self.key_file,
            client_ca_file: None,
            ca_file: self.ca_file,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.command {
        Command::Fetch {
            endpoint,
            token_file,
            out,
            older,
            tls,
        } => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime
                .block_on(fetch(
                    &endpoint,
                    &tls.settings(),
                    &token_file,
                    &out,
                    older.as_deref(),
                ))
                .map(|()| Ok(format!("fetched into {}", out.display()))),
            Err(e) => Err(e.into()),
        },
        Command::Check {
            records,
            checkpoint,
            key,
        } => check(&records, &checkpoint, &key),
        Command::Consistency {
            older,
            newer,
            proof,
            key,
        } => consistency(&older, &newer, &proof, &key),
    };
    match outcome {
        Ok(Ok(message)) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Ok(Err(failure)) => {
            eprintln!("NOT VERIFIED: {failure}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("transfer-verify: {e:#}");
            ExitCode::from(2)
        }
    }
}

type Outcome = anyhow::Result<Result<String, transfer_verify::Failure>>;

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn key_arg(key: &str) -> anyhow::Result<String> {
    Ok(match std::fs::read_to_string(key) {
        Ok(text) => text,
        Err(_) => key.to_owned(),
    })
}

fn check(records: &Path, checkpoint: &Path, key: &str) -> Outcome {
    let records = match read_records(&read(records)?) {
        Ok(records) => records,
        Err(failure) => return Ok(Err(failure)),
    };
    let checkpoint = Checkpoint::decode(read(checkpoint)?.as_slice()).context("checkpoint")?;
    let key = match parse_key(&key_arg(key)?) {
        Ok(key) => key,
        Err(failure) => return Ok(Err(failure)),
    };
    Ok(verify_export(&records, &checkpoint, &key).map(|verified| {
        format!(
            "verified: {} records make the signed tree of size {} ({})",
            verified.records, verified.tree_size, checkpoint.origin
        )
    }))
}

fn consistency(older: &Path, newer: &Path, proof: &Path, key: &str) -> Outcome {
    let older = Checkpoint::decode(read(older)?.as_slice()).context("older checkpoint")?;
    let newer = Checkpoint::decode(read(newer)?.as_slice()).context("newer checkpoint")?;
    let proof = ConsistencyProof::decode(read(proof)?.as_slice()).context("proof")?;
    let key = match parse_key(&key_arg(key)?) {
        Ok(key) => key,
        Err(failure) => return Ok(Err(failure)),
    };
    Ok(verify_consistency(&older, &newer, &proof, &key).map(|()| {
        format!(
            "verified: the log of size {} is a prefix of the log of size {}",
            older.tree_size, newer.tree_size
        )
    }))
}

fn bearer<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", token.trim()).parse()?);
    Ok(request)
}

async fn fetch(
    endpoint: &str,
    tls: &portal_platform::tls::TlsSettings,
    token_file: &Path,
    out: &Path,
    older: Option<&Path>,
) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading {}", token_file.display()))?;
    let mut channel = tonic::transport::Channel::from_shared(endpoint.to_owned())?;
    // The token must never travel in the clear by mistake: TLS settings and the scheme agree.
    let https = channel.uri().scheme_str() == Some("https");
    anyhow::ensure!(
        https == tls.ca_file.is_some(),
        "an https:// endpoint needs --ca-file, and --ca-file needs an https:// endpoint"
    );
    let host = channel.uri().host().unwrap_or_default();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if let Some(config) = portal_platform::tls::client_config(tls, &host)? {
        channel = channel.tls_config(config)?;
    }
    let channel = channel
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let mut client = AffiliateTransferServiceClient::new(channel);
    let checkpoint = client
        .get_checkpoint(bearer(GetCheckpointRequest {}, &token)?)
        .await?
        .into_inner();
    let mut records = Vec::new();
    let mut stream = client
        .export_transfer_records(bearer(ExportTransferRecordsRequest::default(), &token)?)
        .await?
        .into_inner();
    while let Some(record) = stream.next().await {
        records.push(record?);
    }
    let keys = client
        .list_signing_keys(bearer(ListSigningKeysRequest::default(), &token)?)
        .await?
        .into_inner()
        .signing_keys;
    let key = keys
        .iter()
        .find(|k| k.key_id == checkpoint.key_id)
        .context("the service does not publish the checkpoint's key")?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("records.bin"), write_records(&records))?;
    std::fs::write(out.join("checkpoint.bin"), checkpoint.encode_to_vec())?;
    std::fs::write(
        out.join("key.txt"),
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &key.public_key),
    )?;
    if let Some(older) = older {
        let older = Checkpoint::decode(read(older)?.as_slice()).context("older checkpoint")?;
        let proof = client
            .get_consistency_proof(bearer(
                GetConsistencyProofRequest {
                    first_size: older.tree_size,
                    second_size: checkpoint.tree_size,
                },
                &token,
            )?)
            .await?
            .into_inner();
        std::fs::write(out.join("consistency.bin"), proof.encode_to_vec())?;
    }
    Ok(())
}

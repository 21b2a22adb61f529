//! A private PostgreSQL cluster started from the PostgreSQL binaries on this machine: the
//! suite's embedded default and the test harness's fallback when no server is running.
//! PostgreSQL refuses to run as root, so when we are root the cluster runs as the `postgres`
//! (or `nobody`) user, which owns the data folder.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use secrecy::SecretString;

/// A running cluster. It keeps running when this value is dropped; call [`LocalCluster::stop`].
#[derive(Debug)]
pub struct LocalCluster {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    password: String,
    run_as: Option<String>,
}

const PASSWORD_FILE: &str = "password";

const INSTALL_HINT: &str = "no PostgreSQL server binaries found (looked for `initdb` and `pg_ctl` \
     under PG_BIN, `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH); install them \
     (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql@15`) or set \
     DATABASE_URL to a running server";

impl LocalCluster {
    /// Starts the cluster kept in `dir` (creating it on first use) and waits until it accepts
    /// connections; a cluster already running there is reused. `dir` holds the data
    /// (`pgdata/`), the superuser's password and the port, so every run finds the same server.
    /// The server listens on 127.0.0.1 only and requires the password (SCRAM): other local
    /// users cannot log in as its superuser.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir().ok_or_else(|| anyhow!(INSTALL_HINT))?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let run_as = non_root_user()?;
        if let Some(user) = &run_as {
            let (uid, gid) = user_ids(user)?;
            check_reachable(&dir, user, uid)?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let mut cluster = Self {
            data_dir: dir,
            bin_dir,
            port: 0,
            password: String::new(),
            run_as,
        };
        cluster.password = cluster.load_or_make_password()?;
        let pgdata = cluster.pgdata();
        if !pgdata.join("PG_VERSION").exists() {
            cluster.run(
                "initdb",
                &[
                    "-D",
                    &pgdata.to_string_lossy(),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    &format!(
                        "--pwfile={}",
                        cluster.data_dir.join(PASSWORD_FILE).display()
                    ),
                    "--encoding=UTF8",
                    "--no-sync",
                ],
            )?;
        }
        cluster.port = cluster.choose_port()?;
        if !cluster.accepts_connections() {
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                cluster.port,
                cluster.data_dir.display()
            );
            let log = cluster.data_dir.join("postgres.log");
            cluster.run(
                "pg_ctl",
                &[
                    "-D",
                    &pgdata.to_string_lossy(),
                    "-l",
                    &log.to_string_lossy(),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )?;
        }
        Ok(cluster)
    }

    /// The superuser's password, made on first use and readable by its owner only.
    fn load_or_make_password(&self) -> anyhow::Result<String> {
        let path = self.data_dir.join(PASSWORD_FILE);
        if let Ok(existing) = fs::read_to_string(&path) {
            return Ok(existing.trim().to_owned());
        }
        let password = random_hex(24)?;
        fs::write(&path, format!("{password}\n"))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        if let Some(user) = &self.run_as {
            // initdb, running as that user, reads it.
            let (uid, gid) = user_ids(user)?;
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(password)
    }

    /// The remembered port, or a free one when there is none or another program took it.
    fn choose_port(&self) -> anyhow::Result<u16> {
        let path = self.data_dir.join("port");
        let remembered: Option<u16> = fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        if let Some(port) = remembered {
            let ours = self.pgdata().join("postmaster.pid").exists();
            let free = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
            if ours || free {
                return Ok(port);
            }
        }
        let port = free_port()?;
        fs::write(&path, port.to_string())?;
        Ok(port)
    }

    fn pgdata(&self) -> PathBuf {
        self.data_dir.join("pgdata")
    }

    /// Superuser URL of the `postgres` database (it holds the password).
    pub fn admin_url(&self) -> SecretString {
        SecretString::from(format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the server, waiting for it to finish (fast shutdown: sessions are disconnected).
    pub fn stop(&self) -> anyhow::Result<()> {
        let pgdata = self.pgdata();
        self.run(
            "pg_ctl",
            &["-D", &pgdata.to_string_lossy(), "-m", "fast", "-w", "stop"],
        )
        .map(|_| ())
    }

    fn accepts_connections(&self) -> bool {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port);
        self.pgdata().join("postmaster.pid").exists()
            && TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500)).is_ok()
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let binary = self.bin_dir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let output = command
            .args(args)
            .current_dir(&self.data_dir)
            .output()
            .with_context(|| format!("running {}", binary.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed ({}): {}",
                program,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }
}

/// The folder holding `initdb` and `pg_ctl`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return has_tools(&dir).then_some(dir);
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let mut versioned: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("bin"))
        .collect();
    versioned.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    from_pg_config
        .into_iter()
        .chain(versioned.into_iter().rev())
        .chain(on_path)
        .find(|dir| has_tools(dir))
}

/// The user the cluster runs as: none (ourselves) unless we are root.
fn non_root_user() -> anyhow::Result<Option<String>> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u32>()
                .ok()
        })
        .context("reading our own user id (`id -u`)")?;
    if uid != 0 {
        return Ok(None);
    }
    for user in ["postgres", "nobody"] {
        if user_ids(user).is_ok() {
            return Ok(Some(user.to_owned()));
        }
    }
    bail!("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")
}

fn user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == user {
            return Ok((fields[2].parse()?, fields[3].parse()?));
        }
    }
    bail!("no user `{user}` in /etc/passwd")
}

/// PostgreSQL runs as `user`, which must be able to reach `dir` through every folder above it.
fn check_reachable(dir: &Path, user: &str, uid: u32) -> anyhow::Result<()> {
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor)?;
        let passable = meta.uid() == uid || meta.mode() & 0o001 != 0;
        if !passable {
            bail!(
                "PostgreSQL must run as `{user}` (it refuses root), and `{user}` cannot reach {} \
                 because {} is closed to other users; choose a data folder it can reach (for \
                 example under /tmp) or run as a non-root user",
                dir.display(),
                ancestor.display()
            );
        }
    }
    Ok(())
}

/// `bytes` random bytes as hex, from the kernel's generator.
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_cluster_starts_is_reused_and_stops() {
        if find_bin_dir().is_none() {
            panic!("{INSTALL_HINT}");
        }
        let dir = tempfile::tempdir().unwrap();
        // The data folder must be reachable by the unprivileged user PostgreSQL runs as.
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let data = dir.path().join("cluster");
        let cluster = LocalCluster::start(&data).unwrap();
        assert!(cluster.accepts_connections());

        let again = LocalCluster::start(&data).unwrap();
        assert_eq!(again.port(), cluster.port(), "a running cluster is reused");

        cluster.stop().unwrap();
        assert!(!cluster.accepts_connections());
    }
}

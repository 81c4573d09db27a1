//! Helpers the `mspace` and `engine-bench` binaries share: sizes as people write them,
//! passphrases from a file, the environment or a prompt, and progress bars.
//!
//! Invariant: no business rules live here; binaries wire libraries together.

pub mod certifycli;
pub mod chainbench;
pub mod chaincli;
pub mod dealcli;
pub mod demodeal;
pub mod devhosts;
pub mod diskbench;
pub mod exchangebench;
pub mod exchangecli;
pub mod gatewaycli;
pub mod insurecli;
pub mod invoicecli;
pub mod netbench;
pub mod netcli;
pub mod proofbench;
pub mod registry;
pub mod sharecli;
pub mod storebench;

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Environment variable a passphrase may come from, for scripts.
pub const PASSPHRASE_ENV: &str = "MSPACE_PASSPHRASE";

/// One chunk in the JSON of `mspace seal` and `mspace put`.
#[derive(serde::Serialize, Debug)]
pub struct ChunkJson {
    pub index: u64,
    pub id: String,
    pub bytes: u32,
    pub plain_bytes: u32,
    pub crc32c: u32,
}

/// The object `mspace seal --json` prints (and `mspace put --json` extends): ids, the share
/// key, and every chunk's id, sizes and CRC32C.
#[derive(serde::Serialize, Debug)]
pub struct SealJson {
    pub file_id: String,
    pub manifest_id: String,
    pub share_key: String,
    pub name: String,
    pub file_bytes: u64,
    pub chunk_bytes: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<std::path::PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<std::path::PathBuf>,
    pub chunks: Vec<ChunkJson>,
}

impl SealJson {
    pub fn new(
        file_id: proto::FileId,
        manifest_id: proto::ChunkId,
        share_key: &proto::ShareKey,
        m: &proto::Manifest,
        dir: Option<std::path::PathBuf>,
        manifest: Option<std::path::PathBuf>,
    ) -> SealJson {
        SealJson {
            file_id: file_id.to_hex(),
            manifest_id: manifest_id.to_hex(),
            share_key: share_key.to_string(),
            name: m.name.clone(),
            file_bytes: m.file_bytes,
            chunk_bytes: m.chunk_bytes,
            dir,
            manifest,
            chunks: (0u64..)
                .zip(&m.chunks)
                .map(|(index, c)| ChunkJson {
                    index,
                    id: c.id.to_hex(),
                    bytes: c.sealed_bytes,
                    plain_bytes: c.sealed_bytes - proto::TAG_BYTES,
                    crc32c: c.crc32c,
                })
                .collect(),
        }
    }
}

/// Parses a byte count: a plain number, or a number with a binary unit
/// (`K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`, case-insensitive; `B` for bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 8MiB, 64KiB or 1048576"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use B, KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses a chunk size and checks it against the documented range.
pub fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let n = parse_bytes(s)?;
    let n = u32::try_from(n).map_err(|_| {
        format!(
            "chunk size {s} is larger than {} MiB",
            proto::CHUNK_BYTES_MAX >> 20
        )
    })?;
    proto::check_chunk_bytes(n)?;
    Ok(n)
}

/// A file name from a manifest, fit for a terminal: the sender chose it, and a name may hold
/// any character but `/` and NUL (formats.md 3.2), escape sequences included. Control
/// characters are shown escaped (`\u{1b}`), and an empty name reads "file".
pub fn shown_name(name: &str) -> String {
    if name.is_empty() {
        return "file".into();
    }
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Formats bytes with a binary unit, two decimals.
pub fn format_bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    scaled(n as f64)
}

/// Formats a rate, `bytes` in `secs`, as bytes per second with a binary unit.
pub fn format_rate(bytes: u64, secs: f64) -> String {
    if secs > 0.0 {
        format!("{}/s", scaled(bytes as f64 / secs))
    } else {
        "-".into()
    }
}

fn scaled(mut v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

/// The passphrase, from (in order) `--passphrase-file`, `MSPACE_PASSPHRASE`, or a prompt
/// without echo on the terminal; never from the command line. `confirm` asks twice.
pub fn read_passphrase(file: Option<&Path>, confirm: bool) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let pass = if let Some(path) = file {
        let mut bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
        // One trailing newline is how editors and `echo` end a file, not part of the secret.
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            bail!("the passphrase file {} is empty", path.display());
        }
        bytes
    } else if let Some(value) = std::env::var_os(PASSPHRASE_ENV) {
        let bytes = value.into_encoded_bytes();
        if bytes.is_empty() {
            bail!("{PASSPHRASE_ENV} is set but empty");
        }
        bytes
    } else if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Passphrase: ")
            .context("cannot read the passphrase from the terminal")?;
        if first.is_empty() {
            bail!("the passphrase is empty");
        }
        if confirm {
            let again = rpassword::prompt_password("Passphrase again: ")
                .context("cannot read the passphrase from the terminal")?;
            if again != first {
                bail!("the two passphrases differ");
            }
        }
        first.as_bytes().to_vec()
    } else {
        bail!("no passphrase: give --passphrase-file, set {PASSPHRASE_ENV}, or run on a terminal to be asked");
    };
    Ok(zeroize::Zeroizing::new(pass))
}

/// The object `mspace open --json` prints (and `mspace get --json` extends).
#[derive(serde::Serialize, Debug)]
pub struct OpenJson {
    pub file_id: String,
    pub manifest_id: String,
    pub name: String,
    pub file_bytes: u64,
    pub chunks: usize,
    pub out: std::path::PathBuf,
}

impl OpenJson {
    pub fn new(
        file_id: proto::FileId,
        manifest_id: proto::ChunkId,
        m: &proto::Manifest,
        out: &std::path::Path,
    ) -> OpenJson {
        OpenJson {
            file_id: file_id.to_hex(),
            manifest_id: manifest_id.to_hex(),
            name: m.name.clone(),
            file_bytes: m.file_bytes,
            chunks: m.chunks.len(),
            out: out.to_owned(),
        }
    }
}

/// How a reader proves it may open a file (`open`, `get`): a passphrase, or a share key.
#[derive(clap::Args, Debug)]
pub struct UnlockArgs {
    /// Read the passphrase from this file. Without this or a share key, the passphrase comes
    /// from MSPACE_PASSPHRASE or a prompt.
    #[arg(long, conflicts_with_all = ["share_key", "share_key_file"])]
    pub passphrase_file: Option<std::path::PathBuf>,
    /// Open with a share key (mss1-...) printed by `mspace seal` instead of the passphrase.
    /// It is a secret: prefer --share-key-file or MSPACE_SHARE_KEY, which stay out of `ps`.
    #[arg(long, env = "MSPACE_SHARE_KEY", hide_env_values = true)]
    pub share_key: Option<String>,
    /// Read the share key from this file.
    #[arg(long, conflicts_with = "share_key")]
    pub share_key_file: Option<std::path::PathBuf>,
}

impl UnlockArgs {
    /// The share key if one was given (argument, variable or file), else the passphrase
    /// (file, variable or prompt).
    pub fn read(&self) -> Result<net::client::Key> {
        let text = match (&self.share_key, &self.share_key_file) {
            (Some(t), _) => Some(zeroize::Zeroizing::new(t.clone())),
            (None, Some(p)) => Some(zeroize::Zeroizing::new(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the share key file {}", p.display()))?,
            )),
            (None, None) => None,
        };
        Ok(match text {
            Some(t) => net::client::Key::Share(Box::new(
                t.trim().parse().context("reading the share key")?,
            )),
            None => net::client::Key::Passphrase(read_passphrase(
                self.passphrase_file.as_deref(),
                false,
            )?),
        })
    }
}

/// A byte progress bar on stderr when it is a terminal and `enabled`; hidden otherwise.
/// How long a `mspace put` took to reach its milestones, ms from the command's start.
#[derive(Debug, serde::Serialize)]
pub struct PutTimings {
    /// Hosts matched on an exchange (market puts only).
    pub matched_ms: Option<u64>,
    /// The first chunk sent to a host (None: every host had every chunk already).
    pub first_byte_ms: Option<u64>,
    pub total_ms: u64,
}

impl PutTimings {
    pub fn new(
        t0: std::time::Instant,
        matched: Option<std::time::Instant>,
        first_byte: Option<std::time::Instant>,
    ) -> PutTimings {
        let ms = |t: std::time::Instant| {
            u64::try_from(t.saturating_duration_since(t0).as_millis()).unwrap_or(u64::MAX)
        };
        PutTimings {
            matched_ms: matched.map(ms),
            first_byte_ms: first_byte.map(ms),
            total_ms: ms(std::time::Instant::now()),
        }
    }
}

pub fn progress_bar(total: u64, enabled: bool, verb: &str) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template =
        format!("{verb} {{bar:40}} {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} eta {{eta}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("the template above is valid"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_manifests_cannot_drive_the_terminal() {
        assert_eq!(shown_name(""), "file");
        assert_eq!(shown_name("photo 1.jpg"), "photo 1.jpg");
        assert_eq!(shown_name("été"), "été");
        assert_eq!(shown_name("a\u{1b}[2Jb\r\n"), "a\\u{1b}[2Jb\\r\\n");
        assert!(!shown_name("\u{7}\u{9b}x").chars().any(char::is_control));
    }

    #[test]
    fn sizes_parse_like_people_write_them() {
        let ok = [
            ("4096", 4096),
            ("8MiB", 8 << 20),
            ("8m", 8 << 20),
            ("64KiB", 64 << 10),
            ("1 GiB", 1 << 30),
            ("7b", 7),
        ];
        for (s, n) in ok {
            assert_eq!(parse_bytes(s), Ok(n), "{s}");
        }
        for bad in ["", "MiB", "8 XB", "-1", "1.5MiB", "99999999999999999999"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_bytes("20000000T").unwrap_err(),
            "\"20000000T\" is too large"
        );
    }

    #[test]
    fn chunk_sizes_outside_the_range_are_refused() {
        assert_eq!(parse_chunk_size("8MiB"), Ok(8 << 20));
        for (bad, why) in [
            ("1KiB", "range"),
            ("65MiB", "range"),
            ("5000", "multiple"),
            ("8GiB", "larger"),
        ] {
            let err = parse_chunk_size(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn bytes_format_with_binary_units() {
        assert_eq!(format_bytes(5), "5 B");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_bytes(8 << 20), "8.00 MiB");
        assert_eq!(format_rate(3 << 30, 2.0), "1.50 GiB/s");
        assert_eq!(format_rate(1, 0.0), "-");
    }
}

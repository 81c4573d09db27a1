//! The sealed directory: what `mspace seal` writes and `mspace open` reads.
//!
//! A sealed directory holds one file per sealed chunk, named by the chunk id in lowercase
//! hex, and one manifest envelope named `<manifest id>.manifest`. The manifest is written
//! last, after every chunk is durable, so a directory with a manifest is complete; a seal
//! that fails removes what it wrote. Opening writes to a temporary file beside the output
//! and renames it only after every chunk passed its checks.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto::manifest::{BODY_BYTES_MAX, ENVELOPE_HEADER_BYTES};
use proto::{
    ChunkEntry, ChunkId, EnvelopeHeader, FileId, KdfParams, Manifest, ShareKey, TAG_BYTES,
};

use crate::buf::ChunkBuf;
use crate::codec::{derive_file_key, derive_master_key, FileCipher};
use crate::error::{ChunkFault, CodecError};
use crate::seal::{
    check_chunk_count, open_stream, ChunkSource, FileKeys, FileSeal, Plaintext, SealedFile,
};

pub const MANIFEST_SUFFIX: &str = ".manifest";
/// Largest manifest envelope a reader accepts, checked before reading it.
pub const ENVELOPE_BYTES_MAX: u64 =
    (ENVELOPE_HEADER_BYTES + BODY_BYTES_MAX + TAG_BYTES as usize) as u64;

/// How the opener proves it may read the file.
#[derive(Clone, Copy, Debug)]
pub enum Unlock<'a> {
    Passphrase(&'a [u8]),
    ShareKey(&'a ShareKey),
}

#[derive(Clone, Debug)]
pub struct SealOptions {
    pub chunk_bytes: u32,
    pub workers: usize,
    pub kdf: KdfParams,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions {
            chunk_bytes: proto::CHUNK_BYTES_DEFAULT,
            workers: crate::seal::default_workers(),
            kdf: KdfParams::DEFAULT,
        }
    }
}

/// What a seal produced.
#[derive(Debug)]
pub struct Sealed {
    pub file_id: FileId,
    pub manifest_id: ChunkId,
    pub share_key: ShareKey,
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
}

/// The manifest envelope: its encoded bytes, and the id (BLAKE3) hosts address it by.
pub fn build_envelope(
    cipher: &FileCipher,
    kdf: KdfParams,
    salt: [u8; 16],
    manifest: &Manifest,
) -> (Vec<u8>, ChunkId) {
    let mut body = manifest.encode();
    let sealed_body_bytes =
        u32::try_from(body.len() + TAG_BYTES as usize).expect("bounded by BODY_BYTES_MAX");
    let header = EnvelopeHeader {
        kdf,
        salt,
        file_id: cipher.file_id(),
        sealed_body_bytes,
    }
    .encode();
    cipher.seal_manifest(&header, &mut body);
    let mut envelope = Vec::with_capacity(header.len() + body.len());
    envelope.extend_from_slice(&header);
    envelope.extend_from_slice(&body);
    let id = ChunkId::of(&envelope);
    (envelope, id)
}

/// Opens a manifest envelope whose id is `manifest_id`: the key comes from the passphrase
/// (with the envelope's own salt and KDF parameters) or from the share key.
pub fn open_envelope(
    envelope: &[u8],
    manifest_id: ChunkId,
    unlock: Unlock<'_>,
) -> Result<(Manifest, Arc<FileCipher>), CodecError> {
    let (header, aad, sealed_body) = EnvelopeHeader::split(envelope)?;
    let key = match unlock {
        Unlock::Passphrase(pass) => derive_file_key(
            &derive_master_key(pass, &header.salt, header.kdf)?,
            &header.file_id,
        ),
        Unlock::ShareKey(share) => {
            if share.file_id != header.file_id {
                return Err(CodecError::ShareKeyForOtherFile {
                    key_file: share.file_id,
                    dir_file: header.file_id,
                });
            }
            if share.manifest_id != manifest_id {
                return Err(CodecError::ShareKeyForOtherManifest {
                    key_manifest: share.manifest_id,
                    dir_manifest: manifest_id,
                });
            }
            share.file_key.clone()
        }
    };
    let cipher = FileCipher::new(&key, header.file_id);
    let body = cipher.open_manifest(aad, sealed_body).ok_or(match unlock {
        Unlock::Passphrase(_) => CodecError::WrongPassphrase,
        Unlock::ShareKey(_) => CodecError::WrongShareKey,
    })?;
    Ok((Manifest::decode(&body)?, Arc::new(cipher)))
}

/// Removes what a failed seal wrote, so that no half-sealed directory is left behind.
struct Cleanup {
    dir: PathBuf,
    created_dir: bool,
    files: Vec<PathBuf>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        if self.created_dir {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), CodecError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CodecError::io("sync directory", dir))
}

/// Seals the file `input` into `out_dir` (created if missing, and otherwise required to be
/// empty). `progress(done, total)` is called with plaintext bytes after each chunk is written.
pub fn seal_file(
    input: &Path,
    out_dir: &Path,
    passphrase: &[u8],
    opts: &SealOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Sealed, CodecError> {
    let file = File::open(input).map_err(CodecError::io("open", input))?;
    let meta = file.metadata().map_err(CodecError::io("stat", input))?;
    if meta.is_dir() {
        return Err(CodecError::Invalid(format!(
            "{} is a directory, not a file",
            input.display()
        )));
    }
    let name = input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_owned();
    // A regular file's size is known; a pipe's is not.
    let expected_bytes = meta.is_file().then_some(meta.len());
    let input = Plaintext::file(file).map_err(CodecError::io("stat", input))?;
    seal_reader(
        input,
        &name,
        expected_bytes,
        out_dir,
        passphrase,
        opts,
        progress,
    )
}

/// Seals everything `input` yields into `out_dir`. With `expected_bytes`, an input that
/// yields more or less is an error ([`CodecError::InputChanged`]) and a size that needs too
/// many chunks is refused before any work. On any error, what was written is removed.
pub fn seal_reader(
    input: Plaintext,
    name: &str,
    expected_bytes: Option<u64>,
    out_dir: &Path,
    passphrase: &[u8],
    opts: &SealOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Sealed, CodecError> {
    proto::check_chunk_bytes(opts.chunk_bytes).map_err(CodecError::Invalid)?;
    if passphrase.is_empty() {
        return Err(CodecError::Invalid("the passphrase is empty".into()));
    }
    if let Some(len) = expected_bytes {
        check_chunk_count(len, opts.chunk_bytes)?;
    }
    // The name is informational: one that a manifest cannot hold is dropped, not fatal.
    let name = if proto::manifest::check_name(name).is_ok() {
        name.to_owned()
    } else {
        String::new()
    };

    let created_dir = prepare_empty_dir(out_dir)?;
    let mut cleanup = Cleanup {
        dir: out_dir.to_owned(),
        created_dir,
        files: Vec::new(),
        armed: true,
    };

    let keys = FileKeys::fresh(opts.kdf)?;
    let file_key = keys.file_key(passphrase)?;
    let file_id = keys.file_id;
    let mut seal = FileSeal::whole(
        input,
        &file_key,
        keys,
        opts.chunk_bytes,
        opts.workers,
        expected_bytes,
    )?;
    while let Some(chunk) = seal.next() {
        let chunk = chunk?;
        let path = out_dir.join(chunk.entry.id.to_hex());
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(CodecError::io("create chunk file", &path))?;
        cleanup.files.push(path.clone());
        f.write_all(chunk.bytes())
            .map_err(CodecError::io("write chunk file", &path))?;
        f.sync_data()
            .map_err(CodecError::io("sync chunk file", &path))?;
        progress(seal.plain_bytes(), expected_bytes.unwrap_or(0));
    }
    let SealedFile {
        manifest,
        envelope,
        manifest_id,
    } = seal.finish(name)?;

    // The manifest goes last, through a temporary name, so that its presence means the seal
    // is complete and every chunk before it is on disk, names included.
    sync_dir(out_dir)?;
    let manifest_path = out_dir.join(format!("{}{MANIFEST_SUFFIX}", manifest_id.to_hex()));
    let tmp_path = out_dir.join(".manifest.partial");
    cleanup.files.push(tmp_path.clone());
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(CodecError::io("create", &tmp_path))?;
    f.write_all(&envelope)
        .map_err(CodecError::io("write", &tmp_path))?;
    f.sync_all().map_err(CodecError::io("sync", &tmp_path))?;
    fs::rename(&tmp_path, &manifest_path)
        .map_err(CodecError::io("rename manifest into", &manifest_path))?;
    cleanup.files.push(manifest_path.clone());
    sync_dir(out_dir)?;
    cleanup.armed = false;

    let share_key = ShareKey {
        file_id,
        manifest_id,
        file_key: file_key.clone(),
    };
    Ok(Sealed {
        file_id,
        manifest_id,
        share_key,
        manifest,
        manifest_path,
    })
}

/// Checks that `dir` can receive a seal: missing, or an empty directory. Returns whether it
/// exists. Callers run it before asking for a passphrase, and sealing runs it again.
pub fn check_seal_target(dir: &Path) -> Result<bool, CodecError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(CodecError::Invalid(format!(
                    "{} is not empty: seal into a new or empty directory",
                    dir.display()
                )));
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CodecError::Io {
            op: "read directory",
            path: dir.to_owned(),
            source: e,
        }),
    }
}

/// Creates `dir`, or checks that it is an empty directory; returns whether it was created.
fn prepare_empty_dir(dir: &Path) -> Result<bool, CodecError> {
    match check_seal_target(dir)? {
        true => Ok(false),
        false => {
            fs::create_dir(dir).map_err(CodecError::io("create directory", dir))?;
            // The new directory's own name must survive a crash too.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
            Ok(true)
        }
    }
}

/// Checks that `out` may be written by an open: absent, or `overwrite` allowed.
pub fn check_open_target(out: &Path, overwrite: bool) -> Result<(), CodecError> {
    if !overwrite && out.symlink_metadata().is_ok() {
        return Err(CodecError::Invalid(format!(
            "{} already exists (use --force to replace it)",
            out.display()
        )));
    }
    Ok(())
}

/// Finds the one manifest of a sealed directory and the id its name claims, without reading
/// it: cheap enough to run before asking for a passphrase.
pub fn find_manifest(dir: &Path) -> Result<(PathBuf, ChunkId), CodecError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(CodecError::io("read directory", dir))? {
        let entry = entry.map_err(CodecError::io("read directory", dir))?;
        let name = entry.file_name();
        if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(MANIFEST_SUFFIX)) {
            found.push((entry.path(), stem.to_owned()));
        }
    }
    let (path, stem) = match found.len() {
        1 => found.remove(0),
        0 => {
            return Err(CodecError::Invalid(format!(
                                                "{} holds no *{MANIFEST_SUFFIX} file: it is not a sealed directory \
                 (a seal that was interrupted leaves its chunks without one: seal again into a new directory)",
                dir.display()
            )))
        }
        n => {
            return Err(CodecError::Invalid(format!(
                "{} holds {n} manifests; a sealed directory holds one",
                dir.display()
            )))
        }
    };
    let corrupt = |reason: String| CodecError::ManifestCorrupt {
        path: path.clone(),
        reason,
    };
    let named: ChunkId = stem
        .parse()
        .map_err(|e| corrupt(format!("its name is not its id: {e}")))?;
    Ok((path, named))
}

/// Finds the one manifest of a sealed directory, reads it and checks it against its name.
pub fn read_manifest_file(dir: &Path) -> Result<(PathBuf, ChunkId, Vec<u8>), CodecError> {
    let (path, named) = find_manifest(dir)?;
    let corrupt = |reason: String| CodecError::ManifestCorrupt {
        path: path.clone(),
        reason,
    };
    let len = fs::metadata(&path)
        .map_err(CodecError::io("stat", &path))?
        .len();
    if len > ENVELOPE_BYTES_MAX {
        return Err(corrupt(format!(
            "{len} bytes, more than any manifest ({ENVELOPE_BYTES_MAX})"
        )));
    }
    let bytes = fs::read(&path).map_err(CodecError::io("read", &path))?;
    let actual = ChunkId::of(&bytes);
    if actual != named {
        return Err(corrupt(format!(
            "its content hashes to {actual}, not to the id in its name"
        )));
    }
    Ok((path, named, bytes))
}

/// Chunks read from a sealed directory.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirSource { dir: dir.into() }
    }
}

impl ChunkSource for DirSource {
    fn by_position(&self) -> bool {
        true
    }

    fn fetch(&self, index: u64, entry: &ChunkEntry, buf: &mut ChunkBuf) -> Result<(), CodecError> {
        let path = self.dir.join(entry.id.to_hex());
        let fault = |fault| CodecError::Chunk {
            index,
            id: entry.id,
            fault,
        };
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(fault(ChunkFault::Missing))
            }
            Err(e) => {
                return Err(CodecError::Io {
                    op: "open chunk file",
                    path,
                    source: e,
                })
            }
        };
        let expected = u64::from(entry.sealed_bytes);
        let len = f
            .metadata()
            .map_err(CodecError::io("stat chunk file", &path))?
            .len();
        if len != expected {
            return Err(fault(ChunkFault::Length {
                expected,
                found: len,
            }));
        }
        // Read one byte past the end so that a file growing under us is caught too.
        buf.read_from(
            &mut f,
            usize::try_from(expected + 1).expect("a chunk fits in memory"),
        )
        .map_err(CodecError::io("read chunk file", &path))?;
        Ok(())
    }
}

/// What an open produced.
#[derive(Debug)]
pub struct Opened {
    pub file_id: FileId,
    pub manifest_id: ChunkId,
    pub manifest: Manifest,
}

/// Opens the sealed directory `dir` into `out`. Every chunk is verified before its
/// plaintext is written; the output appears (atomically, by rename) only if all passed.
/// An existing `out` is replaced only with `overwrite`. `progress(done, total)` is called
/// with plaintext bytes after each chunk is written.
pub fn open_dir(
    dir: &Path,
    unlock: Unlock<'_>,
    out: &Path,
    overwrite: bool,
    workers: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Opened, CodecError> {
    check_open_target(out, overwrite)?;
    let (_, manifest_id, envelope) = read_manifest_file(dir)?;
    let (manifest, cipher) = open_envelope(&envelope, manifest_id, unlock)?;
    let manifest = Arc::new(manifest);
    let file_id = cipher.file_id();
    open_to_file(
        Arc::clone(&manifest),
        cipher,
        DirSource::new(dir),
        out,
        overwrite,
        workers,
        progress,
    )?;
    let manifest = Arc::try_unwrap(manifest).unwrap_or_else(|m| (*m).clone());
    Ok(Opened {
        file_id,
        manifest_id,
        manifest,
    })
}

/// The process's file-creation mask, read from `/proc/self/status` (setting it to read it
/// would race with other threads); 0o022 where it cannot be read.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
        & 0o777
}

/// Verifies and decrypts every chunk of `manifest` from `source` into `out`, through a
/// temporary file beside it (mode 0600 until then) that is renamed into place (and the
/// directory synced) only after every chunk passed. The one place a plaintext file is written, for `open` and for
/// downloads.
pub fn open_to_file<S: ChunkSource>(
    manifest: Arc<Manifest>,
    cipher: Arc<FileCipher>,
    source: S,
    out: &Path,
    overwrite: bool,
    workers: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), CodecError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Owner-only while it holds the plaintext of chunks that passed before all have: a
    // killed open leaves it behind, readable by no one else. It takes 0666 less the
    // umask, like any file a program creates, only once every chunk passed.
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .prefix(".mspace-open-")
        .suffix(".partial")
        .tempfile_in(parent)
        .map_err(CodecError::io("create a temporary file in", parent))?;
    let mut done = 0u64;
    for chunk in open_stream(Arc::clone(&manifest), cipher, source, workers)? {
        let chunk = chunk?;
        tmp.write_all(chunk.plaintext())
            .map_err(CodecError::io("write", tmp.path()))?;
        done += chunk.plaintext().len() as u64;
        progress(done, manifest.file_bytes);
    }
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
            0o666 & !umask(),
        ))
        .map_err(CodecError::io("set the permissions of", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(CodecError::io("sync", tmp.path()))?;
    if overwrite {
        tmp.persist(out).map_err(|e| CodecError::Io {
            op: "rename output to",
            path: out.to_owned(),
            source: e.error,
        })?;
    } else {
        tmp.persist_noclobber(out).map_err(|e| CodecError::Io {
            op: "rename output to",
            path: out.to_owned(),
            source: e.error,
        })?;
    }
    sync_dir(parent)
}

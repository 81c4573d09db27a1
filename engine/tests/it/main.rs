//! Sealed directories end to end: round trips at every size boundary, a multi-GiB sparse
//! file, and every way a sealed directory can be damaged or opened with the wrong key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use engine::seal::Plaintext;
use engine::sealed_dir::{open_dir, seal_file, seal_reader, SealOptions, Sealed, Unlock};
use engine::{ChunkFault, CodecError};
use proto::{FileKey, KdfParams, ShareKey};

const PASS: &[u8] = b"test passphrase";
/// Argon2id at its cheapest: these tests are about the format, not the KDF's cost.
const CHEAP_KDF: KdfParams = KdfParams {
    m_kib: 64,
    t: 1,
    p: 1,
};

fn opts(chunk_bytes: u32) -> SealOptions {
    SealOptions {
        chunk_bytes,
        workers: 2,
        kdf: CHEAP_KDF,
    }
}

struct Case {
    tmp: tempfile::TempDir,
    sealed: Sealed,
    data: Vec<u8>,
}

impl Case {
    fn new(len: usize, chunk_bytes: u32) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(tmp.path().join("input"), &data).unwrap();
        let sealed = seal_file(
            &tmp.path().join("input"),
            &tmp.path().join("sealed"),
            PASS,
            &opts(chunk_bytes),
            &mut |_, _| {},
        )
        .unwrap();
        Case { tmp, sealed, data }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("sealed")
    }

    fn chunk(&self, index: usize) -> PathBuf {
        self.dir()
            .join(self.sealed.manifest.chunks[index].id.to_hex())
    }

    fn out(&self) -> PathBuf {
        self.tmp.path().join("out")
    }

    fn open(&self, unlock: Unlock<'_>) -> Result<Vec<u8>, CodecError> {
        open_dir(&self.dir(), unlock, &self.out(), true, 2, &mut |_, _| {})?;
        Ok(fs::read(self.out()).unwrap())
    }

    /// Opens a damaged directory: it must fail and leave neither output nor temporary file.
    fn open_fails(&self, unlock: Unlock<'_>) -> CodecError {
        let err = self
            .open(unlock)
            .expect_err("opening a damaged directory must fail");
        let mut names: Vec<_> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["input", "sealed"],
            "a failed open left files behind ({err})"
        );
        err
    }
}

#[test]
fn round_trips_at_every_size_boundary() {
    let cb = 64 * 1024;
    let c = cb as usize;
    for len in [0, 1, c - 1, c, c + 1, 3 * c, 5 * c - 1] {
        let case = Case::new(len, cb);
        assert_eq!(case.sealed.manifest.file_bytes, len as u64);
        assert_eq!(
            case.open(Unlock::Passphrase(PASS)).unwrap(),
            case.data,
            "passphrase, {len} bytes"
        );
        assert_eq!(
            case.open(Unlock::ShareKey(&case.sealed.share_key)).unwrap(),
            case.data,
            "share key, {len} bytes"
        );
        // One file per chunk plus the manifest, nothing else.
        assert_eq!(
            fs::read_dir(case.dir()).unwrap().count(),
            case.sealed.manifest.chunks.len() + 1
        );
    }
}

#[test]
fn multi_gib_sparse_file_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("sparse");
    let len: u64 = (2 << 30) + 4097;
    // Sparse zeros with markers at chunk edges, so a misordered chunk would show.
    let markers = [
        (0u64, 0xa1u8),
        ((8 << 20) - 1, 0xb2),
        (1 << 30, 0xc3),
        (len - 1, 0xd4),
    ];
    {
        let mut f = fs::File::create(&input).unwrap();
        f.set_len(len).unwrap();
        for (at, byte) in markers {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&[byte]).unwrap();
        }
    }
    let sealed_dir = tmp.path().join("sealed");
    let sealed = seal_file(
        &input,
        &sealed_dir,
        PASS,
        &SealOptions {
            kdf: CHEAP_KDF,
            ..SealOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(sealed.manifest.chunks.len(), 257);
    fs::remove_file(&input).unwrap();
    let out = tmp.path().join("out");
    open_dir(
        &sealed_dir,
        Unlock::ShareKey(&sealed.share_key),
        &out,
        false,
        2,
        &mut |_, _| {},
    )
    .unwrap();
    drop(sealed_dir);
    let mut f = fs::File::open(&out).unwrap();
    assert_eq!(f.metadata().unwrap().len(), len);
    let mut buf = vec![0u8; 8 << 20];
    let zeros = vec![0u8; 8 << 20];
    let mut offset = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for &(at, byte) in markers
            .iter()
            .filter(|(at, _)| (offset..offset + n as u64).contains(at))
        {
            let i = usize::try_from(at - offset).unwrap();
            assert_eq!(buf[i], byte, "marker at {at}");
            buf[i] = 0;
        }
        // Compared as slices (memcmp), so this runs at memory speed in debug builds too.
        assert!(
            buf[..n] == zeros[..n],
            "non-zero byte in the block at {offset}"
        );
        offset += n as u64;
    }
    assert_eq!(offset, len);
}

fn fault_of(err: &CodecError) -> (u64, ChunkFault) {
    match err {
        CodecError::Chunk { index, fault, .. } => (*index, fault.clone()),
        other => panic!("expected a chunk error, got {other}"),
    }
}

#[test]
fn damaged_chunks_are_named_and_nothing_is_written() {
    let cb = 64 * 1024u32;
    type Damage = fn(&Case);
    type Expect = fn(&ChunkFault) -> bool;
    let cases: [(&str, Damage, u64, Expect); 6] = [
        (
            "missing",
            |c| fs::remove_file(c.chunk(1)).unwrap(),
            1,
            |f| *f == ChunkFault::Missing,
        ),
        (
            "truncated",
            |c| {
                fs::File::options()
                    .write(true)
                    .open(c.chunk(2))
                    .unwrap()
                    .set_len(100)
                    .unwrap()
            },
            2,
            |f| matches!(f, ChunkFault::Length { found: 100, .. }),
        ),
        (
            "extended",
            |c| {
                fs::File::options()
                    .append(true)
                    .open(c.chunk(0))
                    .unwrap()
                    .write_all(b"x")
                    .unwrap()
            },
            0,
            |f| matches!(f, ChunkFault::Length { .. }),
        ),
        (
            "bit flipped",
            |c| flip(&c.chunk(2), 1000),
            2,
            |f| matches!(f, ChunkFault::Crc { .. }),
        ),
        (
            "last chunk flipped",
            |c| flip(&c.chunk(3), 3),
            3,
            |f| matches!(f, ChunkFault::Crc { .. }),
        ),
        (
            "reordered",
            |c| {
                let (a, b) = (fs::read(c.chunk(0)).unwrap(), fs::read(c.chunk(1)).unwrap());
                fs::write(c.chunk(0), b).unwrap();
                fs::write(c.chunk(1), a).unwrap();
            },
            0,
            |f| matches!(f, ChunkFault::Crc { .. }),
        ),
    ];
    for (name, damage, index, check) in cases {
        let case = Case::new(3 * cb as usize + 10, cb);
        damage(&case);
        let err = case.open_fails(Unlock::Passphrase(PASS));
        let (at, fault) = fault_of(&err);
        assert_eq!(at, index, "{name}: {err}");
        assert!(check(&fault), "{name}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "chunk {index} (id {}",
                case.sealed.manifest.chunks[usize::try_from(index).unwrap()].id
            )),
            "{name}: {text}"
        );
    }
}

fn flip(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x10;
    fs::write(path, bytes).unwrap();
}

fn manifest_path(case: &Case) -> PathBuf {
    case.sealed.manifest_path.clone()
}

#[test]
fn damaged_or_missing_manifests_are_refused() {
    let case = Case::new(100_000, 64 * 1024);
    flip(&manifest_path(&case), 70);
    assert!(matches!(
        case.open_fails(Unlock::Passphrase(PASS)),
        CodecError::ManifestCorrupt { .. }
    ));

    let case = Case::new(100_000, 64 * 1024);
    let renamed = case.dir().join(format!("{}.manifest", "ab".repeat(32)));
    fs::rename(manifest_path(&case), renamed).unwrap();
    let err = case.open_fails(Unlock::Passphrase(PASS));
    assert!(err.to_string().contains("content hashes to"), "{err}");

    let case = Case::new(100_000, 64 * 1024);
    fs::remove_file(manifest_path(&case)).unwrap();
    let err = case.open_fails(Unlock::Passphrase(PASS));
    assert!(err.to_string().contains("not a sealed directory"), "{err}");
}

#[test]
fn wrong_keys_are_refused_with_a_clear_error() {
    let case = Case::new(200_000, 64 * 1024);
    assert!(matches!(
        case.open_fails(Unlock::Passphrase(b"test passphrasE")),
        CodecError::WrongPassphrase
    ));

    let mut forged = case.sealed.share_key.clone();
    forged.file_key = FileKey([0x55; 32]);
    assert!(matches!(
        case.open_fails(Unlock::ShareKey(&forged)),
        CodecError::WrongShareKey
    ));

    // A share key of another file (even of the same content) opens nothing here.
    let other = Case::new(200_000, 64 * 1024);
    assert_eq!(other.data, case.data);
    let err = case.open_fails(Unlock::ShareKey(&other.sealed.share_key));
    assert!(
        matches!(err, CodecError::ShareKeyForOtherFile { .. }),
        "{err}"
    );
    // Even pointed at this file's id, the other file's key does not decrypt it.
    let mut retargeted: ShareKey = other.sealed.share_key.clone();
    retargeted.file_id = case.sealed.file_id;
    retargeted.manifest_id = case.sealed.manifest_id;
    assert!(matches!(
        case.open_fails(Unlock::ShareKey(&retargeted)),
        CodecError::WrongShareKey
    ));
}

#[test]
fn two_seals_of_one_file_share_no_key_nonce_pair() {
    let a = Case::new(300_000, 64 * 1024);
    let b = Case::new(300_000, 64 * 1024);
    assert_ne!(a.sealed.file_id, b.sealed.file_id);
    assert_ne!(a.sealed.share_key.file_key, b.sealed.share_key.file_key);
    for chunk in &a.sealed.manifest.chunks {
        assert!(b.sealed.manifest.chunks.iter().all(|c| c.id != chunk.id));
    }
}

#[test]
fn existing_outputs_and_non_empty_directories_are_left_alone() {
    let case = Case::new(10_000, 64 * 1024);
    fs::write(case.out(), b"precious").unwrap();
    let err = open_dir(
        &case.dir(),
        Unlock::Passphrase(PASS),
        &case.out(),
        false,
        2,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(fs::read(case.out()).unwrap(), b"precious");

    let before = fs::read_dir(case.dir()).unwrap().count();
    let err = seal_file(
        &case.tmp.path().join("input"),
        &case.dir(),
        PASS,
        &opts(64 * 1024),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(fs::read_dir(case.dir()).unwrap().count(), before);

    let missing = case.tmp.path().join("no-such-file");
    let target = case.tmp.path().join("never-created");
    let err = seal_file(&missing, &target, PASS, &opts(64 * 1024), &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("no-such-file"), "{err}");
    assert!(!target.exists());
}

/// Yields `left` bytes of ones, then fails like a dying disk.
struct FailingReader {
    left: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("medium error"));
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(1);
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn a_failed_seal_removes_what_it_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sealed");
    let mut written = 0;
    let err = seal_reader(
        Plaintext::stream(FailingReader {
            left: 5 * 4096 + 100,
        }),
        "x",
        None,
        &out,
        PASS,
        &opts(4096),
        &mut |done, _| written = done,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("after 20480 bytes: medium error"),
        "{err}"
    );
    assert_eq!(
        written,
        5 * 4096,
        "the chunks before the failure were written, then removed"
    );
    assert!(!out.exists(), "the half-sealed directory must be removed");

    // Into an existing empty directory: the directory stays, empty.
    fs::create_dir(&out).unwrap();
    let err = seal_reader(
        Plaintext::stream(std::io::Cursor::new(vec![0u8; 3 * 4096])),
        "x",
        Some(2 * 4096),
        &out,
        PASS,
        &opts(4096),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::InputChanged {
                expected: 8192,
                read: 12288
            }
        ),
        "{err}"
    );
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
}

/// While an open runs, the temporary file holding the plaintext of the chunks that passed
/// is its owner's alone; the output gets the usual 0666 less the umask.
#[test]
fn the_partial_plaintext_is_owner_only_and_the_output_takes_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let case = Case::new(5 * 4096 + 7, 4096);
    let mut modes = Vec::new();
    let parent = case.tmp.path().to_owned();
    open_dir(
        &case.dir(),
        Unlock::Passphrase(PASS),
        &case.out(),
        true,
        2,
        &mut |_, _| {
            for e in fs::read_dir(&parent).unwrap() {
                let e = e.unwrap();
                if e.file_name().to_string_lossy().starts_with(".mspace-open-") {
                    modes.push(e.metadata().unwrap().permissions().mode() & 0o777);
                }
            }
        },
    )
    .unwrap();
    assert_eq!(modes.len(), 6, "the partial file, seen after each chunk");
    assert!(modes.iter().all(|m| *m == 0o600), "{modes:?}");
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    let out = fs::metadata(case.out()).unwrap().permissions().mode() & 0o777;
    assert_eq!(out, 0o666 & !umask);
    assert_eq!(fs::read(case.out()).unwrap(), case.data);
}

//! The blob store on both backends: a local folder always, and a real S3-protocol server when
//! `RFT_TEST_S3_ENDPOINT` names one (moto in `scripts/services.sh`), so the same behaviour is
//! checked through the same HTTP client, signing and XML as against AWS. With
//! `RFT_REQUIRE_SERVICES` set, a missing endpoint fails instead of skipping. The fault tests (a
//! closed port, a server that answers 503) need no server and always run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rft_store::blobs::{BlobError, Blobs, Manifest, ManifestFile, S3Options};
use sha2::{Digest, Sha256};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// One backend under test, with the folders it needs kept alive.
struct Case {
    name: &'static str,
    blobs: Blobs,
    /// A scratch folder outside the store, for files to upload and fetch into.
    scratch: tempfile::TempDir,
    /// The local store's parent folder: nothing may appear in it beside `root`.
    _local: Option<tempfile::TempDir>,
    /// For S3: the same bucket without the prefix, to see what reached the bucket.
    whole_bucket: Option<Blobs>,
}

fn unique(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{tag}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn s3_options(endpoint: &str, secret: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_owned()),
        region: "us-east-1".to_owned(),
        access_key: Some("test".to_owned()),
        secret_key: Some(secret.to_owned()),
        session_token: None,
        allow_http: true,
    }
}

/// Creates a bucket with an unsigned `PUT /bucket`, which moto accepts.
fn create_bucket(endpoint: &str, bucket: &str) -> Result<(), Box<dyn std::error::Error>> {
    let host = endpoint
        .strip_prefix("http://")
        .ok_or("RFT_TEST_S3_ENDPOINT must be http://HOST:PORT")?
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(format!("creating bucket {bucket}: {status}").into());
    }
    Ok(())
}

/// The backends this test runs on: local always, S3 when an endpoint is given.
fn cases(test: &str) -> Result<Vec<Case>, Box<dyn std::error::Error>> {
    let local = tempfile::tempdir()?;
    let mut cases = vec![Case {
        name: "local",
        blobs: Blobs::local(&local.path().join("root"))?,
        scratch: tempfile::tempdir()?,
        _local: Some(local),
        whole_bucket: None,
    }];
    match std::env::var("RFT_TEST_S3_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => {
            let endpoint = endpoint.trim().to_owned();
            let bucket = unique("rft-blobs");
            create_bucket(&endpoint, &bucket)?;
            let options = s3_options(&endpoint, "test");
            cases.push(Case {
                name: "s3",
                blobs: Blobs::s3(&bucket, &unique("prefix"), options.clone())?,
                scratch: tempfile::tempdir()?,
                _local: None,
                whole_bucket: Some(Blobs::s3(&bucket, "", options)?),
            });
        }
        _ if std::env::var_os("RFT_REQUIRE_SERVICES").is_some() => {
            return Err(format!(
                "{test}: RFT_TEST_S3_ENDPOINT is not set but RFT_REQUIRE_SERVICES is: \
                 start an S3-protocol server (scripts/services.sh) and set it"
            )
            .into());
        }
        _ => eprintln!("{test}: RFT_TEST_S3_ENDPOINT is not set: skipped the S3 backend"),
    }
    Ok(cases)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic, incompressible-looking bytes.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Every file under `dir` with its contents, relative paths sorted.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let relative = path
                    .strip_prefix(base)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((relative, std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes)
}

/// A folder shaped like a checkpoint: nested folders, plus what publishing must skip.
fn checkpoint_dir(dir: &Path) -> std::io::Result<()> {
    write(&dir.join("adapter_config.json"), br#"{"r": 8}"#)?;
    write(
        &dir.join("adapter_model.safetensors"),
        &pseudo_random(100_000, 1),
    )?;
    write(&dir.join("optim/state.bin"), &pseudo_random(3_000, 2))?;
    write(&dir.join("optim/deep/er/empty.txt"), b"")?;
    // A writer's temporary file in flight: never published.
    write(&dir.join("optim/state.bin.tmp-123-4"), b"partial")?;
    #[cfg(unix)]
    std::os::unix::fs::symlink("/etc/hostname", dir.join("link-outside"))?;
    Ok(())
}

fn expect_invalid<T: std::fmt::Debug>(what: &str, result: Result<T, BlobError>) {
    match result {
        Err(BlobError::InvalidKey { .. }) => {}
        other => panic!("{what}: expected InvalidKey, got {other:?}"),
    }
}

fn expect_corrupt<T: std::fmt::Debug>(what: &str, result: Result<T, BlobError>) {
    match result {
        Err(BlobError::Corrupt { .. }) => {}
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    }
}

#[test]
fn put_get_exists_delete_and_list_round_trip() -> TestResult {
    for case in cases("put_get_exists_delete_and_list_round_trip")? {
        let blobs = &case.blobs;
        let name = case.name;
        assert_eq!(blobs.get("files/missing", 1 << 20)?, None, "{name}");
        assert!(!blobs.exists("files/missing")?, "{name}");
        blobs.put("files/a", b"alpha")?;
        blobs.put("jobs/j1/events.jsonl", b"{}\n")?;
        blobs.put("jobs/j1/ckpt/step-1/w.bin", &[0u8; 10])?;
        blobs.put("jobs/j10/other", b"not under jobs/j1")?;
        blobs.put("files/empty", b"")?;
        assert_eq!(blobs.get("files/a", 5)?, Some(b"alpha".to_vec()), "{name}");
        assert_eq!(blobs.get("files/empty", 0)?, Some(Vec::new()), "{name}");
        assert!(blobs.exists("files/a")?, "{name}");
        blobs.put("files/a", b"alpha, again")?;
        assert_eq!(
            blobs.get("files/a", 100)?,
            Some(b"alpha, again".to_vec()),
            "{name}: a put replaces"
        );
        assert_eq!(
            blobs.list("jobs/j1")?,
            vec![
                ("jobs/j1/ckpt/step-1/w.bin".to_owned(), 10),
                ("jobs/j1/events.jsonl".to_owned(), 3)
            ],
            "{name}: only what is under jobs/j1/, not jobs/j10"
        );
        let everything: Vec<String> = blobs.list("")?.into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            everything,
            [
                "files/a",
                "files/empty",
                "jobs/j1/ckpt/step-1/w.bin",
                "jobs/j1/events.jsonl",
                "jobs/j10/other"
            ],
            "{name}"
        );
        assert!(blobs.list("nothing/here")?.is_empty(), "{name}");
        blobs.delete("files/a")?;
        blobs.delete("files/a")?;
        blobs.delete("never/was")?;
        assert!(!blobs.exists("files/a")?, "{name}");
        assert_eq!(blobs.delete_prefix("jobs/j1")?, 2, "{name}");
        assert!(blobs.list("jobs/j1")?.is_empty(), "{name}");
        assert_eq!(
            blobs.get("jobs/j10/other", 100)?.as_deref(),
            Some(&b"not under jobs/j1"[..])
        );
        assert_eq!(blobs.delete_prefix("jobs/j1")?, 0, "{name}: again is fine");
        expect_invalid("delete everything", blobs.delete_prefix(""));

        if let Some(root) = blobs.local_root() {
            assert_eq!(blobs.describe(), root.display().to_string());
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
                assert_eq!(mode(root)?, 0o700);
                assert_eq!(mode(&root.join("jobs"))?, 0o700);
                assert_eq!(mode(&root.join("jobs/j10/other"))?, 0o600);
            }
            assert!(
                !root.join("jobs/j1").exists(),
                "delete_prefix removes the folder"
            );
            assert!(!names_in(&root.join("files"))
                .iter()
                .any(|n| n.contains(".tmp-")));
        } else {
            assert!(
                blobs.describe().starts_with("s3://rft-blobs-"),
                "{}",
                blobs.describe()
            );
        }
    }
    Ok(())
}

#[test]
fn get_refuses_a_blob_over_the_limit() -> TestResult {
    for case in cases("get_refuses_a_blob_over_the_limit")? {
        case.blobs.put("big", &[7u8; 1000])?;
        match case.blobs.get("big", 999) {
            Err(BlobError::TooLarge { limit: 999, .. }) => {}
            other => panic!("{}: expected TooLarge, got {other:?}", case.name),
        }
        assert_eq!(case.blobs.get("big", 1000)?.map(|b| b.len()), Some(1000));
    }
    Ok(())
}

#[test]
fn put_file_and_get_file_stream_20_mib_byte_exact() -> TestResult {
    for case in cases("put_file_and_get_file_stream_20_mib_byte_exact")? {
        let name = case.name;
        let blobs = &case.blobs;
        // 20 MiB and a bit: three parts on S3 (8 + 8 + 4 MiB and change).
        let bytes = pseudo_random((20 << 20) + 12_345, 42);
        let source = case.scratch.path().join("upload.bin");
        std::fs::write(&source, &bytes)?;
        let started = Instant::now();
        assert_eq!(
            blobs.put_file("ckpt/model.bin", &source)?,
            bytes.len() as u64
        );
        eprintln!("{name}: put_file 20 MiB in {:?}", started.elapsed());
        assert_eq!(
            blobs.list("ckpt")?,
            vec![("ckpt/model.bin".to_owned(), bytes.len() as u64)]
        );
        let dest = case.scratch.path().join("down/model.bin");
        assert!(blobs.get_file("ckpt/model.bin", &dest)?, "{name}");
        let fetched = std::fs::read(&dest)?;
        assert_eq!(fetched.len(), bytes.len(), "{name}");
        assert_eq!(sha256_hex(&fetched), sha256_hex(&bytes), "{name}");
        assert!(
            !names_in(&case.scratch.path().join("down"))
                .iter()
                .any(|n| n.contains(".tmp-")),
            "{name}: no temporary file left"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&dest)?.permissions().mode() & 0o777,
                0o600
            );
        }
        // A small file goes in one request; a missing blob leaves no file.
        let small = case.scratch.path().join("small.txt");
        std::fs::write(&small, b"small")?;
        assert_eq!(blobs.put_file("small", &small)?, 5);
        assert_eq!(blobs.get("small", 10)?.as_deref(), Some(&b"small"[..]));
        let nowhere = case.scratch.path().join("missing.bin");
        assert!(!blobs.get_file("missing", &nowhere)?, "{name}");
        assert!(!nowhere.exists(), "{name}");
        match blobs.put_file("x", &case.scratch.path().join("no-such-file")) {
            Err(BlobError::Io { .. }) => {}
            other => panic!("{name}: expected Io, got {other:?}"),
        }

        if let Some(root) = blobs.local_root() {
            // The key's own file: both directions are no-ops that leave it whole.
            let own = root.join("ckpt/model.bin");
            assert_eq!(blobs.put_file("ckpt/model.bin", &own)?, bytes.len() as u64);
            assert!(blobs.get_file("ckpt/model.bin", &own)?);
            assert_eq!(sha256_hex(&std::fs::read(&own)?), sha256_hex(&bytes));
        }
    }
    Ok(())
}

#[test]
fn publish_dir_then_manifest_and_fetch_dir_round_trip() -> TestResult {
    for case in cases("publish_dir_then_manifest_and_fetch_dir_round_trip")? {
        let name = case.name;
        let blobs = &case.blobs;
        let source = case.scratch.path().join("source");
        checkpoint_dir(&source)?;
        let published = blobs.publish_dir("jobs/j/step-10", &source)?;
        let paths: Vec<&str> = published.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "adapter_config.json",
                "adapter_model.safetensors",
                "optim/deep/er/empty.txt",
                "optim/state.bin"
            ],
            "{name}: regular files only, no temp file, no link"
        );
        let model = &published.files[1];
        assert_eq!(model.size, 100_000);
        assert_eq!(model.sha256, sha256_hex(&pseudo_random(100_000, 1)));
        assert_eq!(
            blobs.manifest("jobs/j/step-10")?.as_ref(),
            Some(&published),
            "{name}"
        );
        let keys: Vec<String> = blobs
            .list("jobs/j/step-10")?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys.last().map(String::as_str),
            Some("jobs/j/step-10/optim/state.bin")
        );
        assert!(
            keys.contains(&"jobs/j/step-10/MANIFEST.json".to_owned()),
            "{name}"
        );

        // Into a folder that does not exist yet, and over one holding something stale.
        let fresh = case.scratch.path().join("fetched/a");
        assert_eq!(
            blobs.fetch_dir("jobs/j/step-10", &fresh)?.as_ref(),
            Some(&published)
        );
        let mut expected = snapshot(&source);
        expected.retain(|(path, _)| !path.contains(".tmp-") && path != "link-outside");
        assert_eq!(snapshot(&fresh), expected, "{name}");
        let stale = case.scratch.path().join("fetched/b");
        write(&stale.join("stale.txt"), b"old")?;
        blobs.fetch_dir("jobs/j/step-10", &stale)?;
        assert_eq!(snapshot(&stale), expected, "{name}: replaced, not merged");
        assert_eq!(
            names_in(&case.scratch.path().join("fetched")),
            ["a", "b"],
            "{name}: no temporary folder left"
        );

        // A re-publish of a changed folder is what a later fetch gets.
        write(&source.join("adapter_config.json"), br#"{"r": 16}"#)?;
        let again = blobs.publish_dir("jobs/j/step-10", &source)?;
        assert_ne!(again.files[0].sha256, published.files[0].sha256);
        blobs.fetch_dir("jobs/j/step-10", &fresh)?;
        assert_eq!(
            std::fs::read(fresh.join("adapter_config.json"))?,
            br#"{"r": 16}"#
        );

        if let Some(root) = blobs.local_root() {
            // Publishing the store's own folder, and fetching it onto itself, check in place.
            let own = root.join("jobs/j/step-10");
            let in_place = blobs.publish_dir("jobs/j/step-10", &own)?;
            assert_eq!(in_place.files, again.files);
            assert_eq!(
                blobs.fetch_dir("jobs/j/step-10", &own)?.map(|m| m.files),
                Some(again.files)
            );
        }
    }
    Ok(())
}

#[test]
fn an_interrupted_publish_has_no_manifest_and_fetch_leaves_the_folder_alone() -> TestResult {
    for case in cases("an_interrupted_publish_has_no_manifest")? {
        let name = case.name;
        let blobs = &case.blobs;
        let local = case.scratch.path().join("local");
        write(&local.join("keep.txt"), b"mine")?;
        let before = snapshot(&local);

        // Files uploaded, the process killed before the manifest.
        blobs.put("half/a.bin", b"a")?;
        blobs.put("half/sub/b.bin", b"b")?;
        assert_eq!(blobs.manifest("half")?, None, "{name}");
        assert_eq!(blobs.fetch_dir("half", &local)?, None, "{name}");
        assert_eq!(snapshot(&local), before, "{name}");

        // A complete publish whose re-publish died after deleting the manifest.
        let source = case.scratch.path().join("source");
        checkpoint_dir(&source)?;
        blobs.publish_dir("whole", &source)?;
        blobs.delete("whole/MANIFEST.json")?;
        assert_eq!(blobs.manifest("whole")?, None, "{name}");
        assert_eq!(blobs.fetch_dir("whole", &local)?, None, "{name}");
        assert_eq!(snapshot(&local), before, "{name}");

        // Never published at all; the target need not exist and is not created.
        let absent = case.scratch.path().join("absent");
        assert_eq!(blobs.fetch_dir("never", &absent)?, None, "{name}");
        assert!(!absent.exists(), "{name}");
    }
    Ok(())
}

#[test]
fn a_corrupted_file_fails_the_fetch_and_leaves_the_folder_alone() -> TestResult {
    for case in cases("a_corrupted_file_fails_the_fetch")? {
        let name = case.name;
        let blobs = &case.blobs;
        let source = case.scratch.path().join("source");
        checkpoint_dir(&source)?;
        blobs.publish_dir("ck", &source)?;
        let local = case.scratch.path().join("out/local");
        write(&local.join("keep.txt"), b"mine")?;
        let before = snapshot(&local);

        // Same size, different bytes: only the hash can tell.
        let mut tampered = pseudo_random(100_000, 1);
        tampered[500] ^= 1;
        blobs.put("ck/adapter_model.safetensors", &tampered)?;
        expect_corrupt(name, blobs.fetch_dir("ck", &local));
        assert_eq!(snapshot(&local), before, "{name}");
        // A different size, and a listed file that is gone.
        blobs.put("ck/adapter_model.safetensors", b"short")?;
        expect_corrupt(name, blobs.fetch_dir("ck", &local));
        blobs.delete("ck/adapter_model.safetensors")?;
        expect_corrupt(name, blobs.fetch_dir("ck", &local));
        assert_eq!(snapshot(&local), before, "{name}");
        assert_eq!(
            names_in(&case.scratch.path().join("out")),
            ["local"],
            "{name}: the temporary folder is removed"
        );
        if let Some(root) = blobs.local_root() {
            expect_corrupt("in place", blobs.fetch_dir("ck", &root.join("ck")));
        }
    }
    Ok(())
}

const HOSTILE: &[&str] = &[
    "",
    "../x",
    "a/../../b",
    "/etc/passwd",
    "a//b",
    "a\\b",
    "..",
    ".",
    "a/./b",
    "a/",
    "nul\0byte",
    "line\nbreak",
];

#[test]
fn hostile_keys_are_refused_and_nothing_escapes() -> TestResult {
    let long = "k".repeat(2000);
    let mut hostile: Vec<&str> = HOSTILE.to_vec();
    hostile.push(&long);
    for case in cases("hostile_keys_are_refused_and_nothing_escapes")? {
        let blobs = &case.blobs;
        let file = case.scratch.path().join("f");
        std::fs::write(&file, b"x")?;
        let dir = case.scratch.path().join("d");
        write(&dir.join("x"), b"x")?;
        for key in &hostile {
            let what = format!("{}: {key:?}", case.name);
            expect_invalid(&what, blobs.put(key, b"x"));
            expect_invalid(&what, blobs.put_file(key, &file));
            expect_invalid(&what, blobs.get(key, 10));
            expect_invalid(&what, blobs.get_file(key, &case.scratch.path().join("g")));
            expect_invalid(&what, blobs.exists(key));
            expect_invalid(&what, blobs.delete(key));
            expect_invalid(&what, blobs.delete_prefix(key));
            expect_invalid(&what, blobs.publish_dir(key, &dir));
            expect_invalid(&what, blobs.manifest(key));
            expect_invalid(&what, blobs.fetch_dir(key, &case.scratch.path().join("h")));
            if !key.is_empty() {
                expect_invalid(&what, blobs.list(key));
            }
        }
        let message = blobs
            .put("../x", b"x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("'..'") && message.contains("keys are relative"),
            "{message}"
        );
        let message = blobs
            .put(&long, b"x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.len() < 1000,
            "a long key is cut in the message: {}",
            message.len()
        );
        // A folder whose file name cannot be a key is refused, not half published.
        let odd = case.scratch.path().join("odd");
        write(&odd.join("back\\slash"), b"x")?;
        expect_invalid("odd file name", blobs.publish_dir("odd", &odd));

        assert!(blobs.list("")?.is_empty(), "{}: nothing stored", case.name);
        if let (Some(root), Some(local)) = (blobs.local_root(), &case._local) {
            assert_eq!(names_in(local.path()), ["root"], "nothing beside the root");
            assert!(names_in(root).is_empty(), "nothing in the root");
            assert!(!Path::new("/etc/passwd.tmp-").exists());
        }
        if let Some(bucket) = &case.whole_bucket {
            assert!(
                bucket.list("")?.is_empty(),
                "nothing anywhere in the bucket"
            );
        }
        assert_eq!(
            names_in(case.scratch.path()),
            ["d", "f", "odd"],
            "{}",
            case.name
        );
    }
    Ok(())
}

#[test]
fn a_hostile_manifest_is_corrupt_and_writes_nothing() -> TestResult {
    for case in cases("a_hostile_manifest_is_corrupt_and_writes_nothing")? {
        let name = case.name;
        let blobs = &case.blobs;
        let sha = sha256_hex(b"evil");
        let target = case.scratch.path().join("a/b/target");
        for path in ["../../evil", "/tmp/evil", "a/../../evil", "a//b", ""] {
            let manifest = Manifest {
                files: vec![ManifestFile {
                    path: path.to_owned(),
                    size: 4,
                    sha256: sha.clone(),
                }],
                created_at: 0,
            };
            blobs.put("bad/MANIFEST.json", &serde_json::to_vec(&manifest)?)?;
            expect_corrupt(name, blobs.manifest("bad"));
            expect_corrupt(name, blobs.fetch_dir("bad", &target));
        }
        for body in [
            &b"not json"[..],
            br#"{"files": [{"path": "x"}]}"#,
            br#"{"files": [{"path": "x", "size": 1, "sha256": "XYZ"}], "created_at": 1}"#,
        ] {
            blobs.put("bad/MANIFEST.json", body)?;
            expect_corrupt(name, blobs.manifest("bad"));
            expect_corrupt(name, blobs.fetch_dir("bad", &target));
        }
        assert!(
            names_in(case.scratch.path()).is_empty(),
            "{name}: nothing written"
        );
        assert!(!case.scratch.path().join("evil").exists());
        assert!(!case.scratch.path().join("a/evil").exists());
    }
    Ok(())
}

#[test]
fn describe_and_debug_never_show_the_secret() -> TestResult {
    let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
    let blobs = Blobs::s3(
        "my-bucket",
        "team/ckpts/",
        s3_options("http://127.0.0.1:9", secret),
    )?;
    assert_eq!(blobs.describe(), "s3://my-bucket/team/ckpts");
    assert!(!format!("{blobs:?}").contains(secret));
    assert!(!format!("{:?}", s3_options("http://x", secret)).contains(secret));
    assert_eq!(
        Blobs::s3("b-2", "", S3Options::default())?.describe(),
        "s3://b-2"
    );
    Ok(())
}

#[test]
fn open_accepts_s3_file_and_empty_addresses_only() -> TestResult {
    let dir = tempfile::tempdir()?;
    let default_root = dir.path().join("blobs");
    let blobs = Blobs::open("", &default_root)?;
    assert_eq!(blobs.local_root(), Some(default_root.as_path()));
    assert!(default_root.is_dir());
    let elsewhere = dir.path().join("elsewhere");
    let spec = format!("file://{}", elsewhere.display());
    assert_eq!(
        Blobs::open(&spec, &default_root)?.local_root(),
        Some(elsewhere.as_path())
    );
    let s3 = Blobs::open("s3://some-bucket/runs/a", &default_root)?;
    assert_eq!(s3.describe(), "s3://some-bucket/runs/a");
    assert_eq!(s3.local_root(), None);
    for bad in [
        "file://relative/path",
        "http://user:hunter2@host/bucket",
        "gs://bucket",
        "/abs/path",
        "s3://",
        "s3://Bad_Bucket",
        "s3://bucket/../x",
    ] {
        match Blobs::open(bad, &default_root) {
            Err(BlobError::Config(message)) => {
                assert!(!message.contains("hunter2"), "{message}");
            }
            other => panic!("{bad}: expected Config, got {other:?}"),
        }
    }
    let message = Blobs::open("gs://x", &default_root)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        message.contains("s3://") && message.contains("file:///"),
        "{message}"
    );
    Ok(())
}

#[test]
fn open_configures_s3_from_the_aws_environment() -> TestResult {
    // The environment is process-wide, so the variables are given to a child process (this
    // test binary, running only `open_child_uses_the_environment`), never set here.
    let Some(case) = cases("open_configures_s3_from_the_aws_environment")?
        .into_iter()
        .find(|c| c.name == "s3")
    else {
        return Ok(());
    };
    let endpoint = std::env::var("RFT_TEST_S3_ENDPOINT")?;
    let bucket = case
        .whole_bucket
        .as_ref()
        .map(Blobs::describe)
        .unwrap_or_default();
    let spec = format!("{bucket}/from-env/");
    let output = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "open_child_uses_the_environment", "--nocapture"])
        .env("RFT_BLOBS_CHILD_SPEC", &spec)
        .env("AWS_ENDPOINT_URL", endpoint.trim())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_ALLOW_HTTP")
        .output()?;
    let log = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("child: opened"), "{log}");
    let seen = case
        .whole_bucket
        .as_ref()
        .map(|b| b.list("from-env"))
        .transpose()?;
    assert_eq!(
        seen,
        Some(vec![("from-env/k".to_owned(), 5)]),
        "the child wrote through Blobs::open"
    );
    Ok(())
}

#[test]
fn open_child_uses_the_environment() -> TestResult {
    // Does its work only as the child of the test above.
    let Ok(spec) = std::env::var("RFT_BLOBS_CHILD_SPEC") else {
        return Ok(());
    };
    let blobs = Blobs::open(&spec, Path::new("/nonexistent"))?;
    assert_eq!(blobs.describe(), spec.trim_end_matches('/'));
    blobs.put("k", b"hello")?;
    assert_eq!(blobs.get("k", 10)?.as_deref(), Some(&b"hello"[..]));
    println!("child: opened {}", blobs.describe());
    Ok(())
}

#[test]
fn an_s3_store_that_is_down_fails_fast_without_leaking_credentials() -> TestResult {
    // A port that was free a moment ago: connections are refused.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let secret = "s3cr3t-DO-NOT-LEAK-0123456789abcdef";
    let blobs = Blobs::s3(
        "down-bucket",
        "p",
        s3_options(&format!("http://127.0.0.1:{port}"), secret),
    )?
    .with_retry(2, Duration::from_secs(2));
    let started = Instant::now();
    let error = match blobs.put("k", b"v") {
        Err(error @ BlobError::Remote { .. }) => error,
        other => panic!("expected Remote, got {other:?}"),
    };
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains("X-Amz-Signature"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("authorization"),
            "{text}"
        );
    }
    eprintln!("down: {error} (after {elapsed:?})");
    match blobs.get("k", 10) {
        Err(BlobError::Remote { message, .. }) => assert!(!message.contains(secret)),
        other => panic!("expected Remote, got {other:?}"),
    }
    assert!(!blobs.describe().contains(secret));
    Ok(())
}

/// A fake S3 server on loopback: `respond` turns each request line into a whole HTTP response;
/// every request line is recorded.
fn fake_s3(respond: fn(&str) -> String) -> std::io::Result<(String, Arc<Mutex<Vec<String>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || serve(stream, &seen, respond));
        }
    });
    Ok((endpoint, requests))
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<String>>, respond: fn(&str) -> String) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request_line = request_line.trim_end().to_owned();
        let answer = respond(&request_line);
        if let Ok(mut seen) = seen.lock() {
            seen.push(request_line);
        }
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn unavailable(_: &str) -> String {
    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_owned()
}

/// Starts multipart uploads and takes part 1, refuses part 2, accepts aborts.
fn refuses_second_part(request: &str) -> String {
    let ok = |body: &str, extra: &str| {
        format!(
            "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    if request.starts_with("POST") && request.contains("?uploads") {
        ok(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult>\
             <Bucket>parts-bucket</Bucket><Key>p/big</Key><UploadId>up-1</UploadId>\
             </InitiateMultipartUploadResult>",
            "",
        )
    } else if request.starts_with("PUT") && request.contains("partNumber=1&") {
        ok("", "ETag: \"etag-1\"\r\n")
    } else if request.starts_with("DELETE") && request.contains("uploadId=up-1") {
        "HTTP/1.1 204 No Content\r\n\r\n".to_owned()
    } else {
        "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_owned()
    }
}

#[test]
fn a_failed_multipart_upload_is_aborted() -> TestResult {
    let (endpoint, requests) = fake_s3(refuses_second_part)?;
    let blobs = Blobs::s3("parts-bucket", "p", s3_options(&endpoint, "x"))?
        .with_retry(1, Duration::from_secs(5));
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("big.bin");
    std::fs::write(&source, pseudo_random(17 << 20, 3))?;
    match blobs.put_file("big", &source) {
        Err(BlobError::Remote { .. }) => {}
        other => panic!("expected Remote, got {other:?}"),
    }
    let requests = requests.lock().map(|r| r.clone()).unwrap_or_default();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("PUT") && r.contains("partNumber=2")),
        "{requests:?}"
    );
    assert!(
        requests
            .last()
            .is_some_and(|r| r.starts_with("DELETE") && r.contains("uploadId=up-1")),
        "the upload is aborted last: {requests:?}"
    );
    Ok(())
}

#[test]
fn an_s3_store_answering_503_is_retried_then_fails_and_publishes_no_manifest() -> TestResult {
    let (endpoint, requests) = fake_s3(unavailable)?;
    let secret = "another-s3cr3t-value-987654321";
    let blobs = Blobs::s3("busy-bucket", "p", s3_options(&endpoint, secret))?
        .with_retry(3, Duration::from_secs(5));
    let started = Instant::now();
    match blobs.put("k", b"v") {
        Err(BlobError::Remote { message, .. }) => {
            assert!(!message.contains(secret), "{message}");
            assert!(message.contains("503"), "{message}");
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let count = requests.lock().map(|r| r.len()).unwrap_or(0);
    assert!(count > 1, "retried: {count} requests");
    assert!(count <= 4, "at most 1 + 3 retries: {count} requests");

    let dir = tempfile::tempdir()?;
    write(&dir.path().join("a.txt"), b"a")?;
    match blobs.publish_dir("ck", dir.path()) {
        Err(BlobError::Remote { .. }) => {}
        other => panic!("expected Remote, got {other:?}"),
    }
    let requests = requests.lock().map(|r| r.clone()).unwrap_or_default();
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("PUT") && r.contains("MANIFEST.json")),
        "no manifest was written: {requests:?}"
    );
    Ok(())
}

#[test]
fn works_from_inside_an_async_runtime_and_its_last_clone_drops_there() -> TestResult {
    // The store is called from tokio handlers, where a nested `block_on` (or a blocking drop of
    // a runtime) panics; a current-thread runtime is the strictest such context.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for case in cases("works_from_inside_an_async_runtime")? {
        let Case { name, blobs, .. } = case;
        let clone = blobs.clone();
        let got = runtime.block_on(async move {
            let result = clone
                .put("from/async", b"t")
                .and_then(|()| clone.get("from/async", 10));
            drop(clone);
            drop(blobs);
            result
        })?;
        assert_eq!(got.as_deref(), Some(&b"t"[..]), "{name}");
    }
    // An S3 store made and dropped inside a handler, with no request ever made.
    runtime.block_on(async {
        let blobs = Blobs::s3("b-3", "", s3_options("http://127.0.0.1:9", "x"))?;
        let twin = blobs.clone().with_retry(1, Duration::from_secs(1));
        drop(blobs);
        drop(twin);
        Ok::<_, BlobError>(())
    })?;
    Ok(())
}
